"""Scoring: perplexity over token windows, and the runner that turns cells into records."""

from qsink.evaluate.perplexity import PerplexityResult, perplexity
from qsink.evaluate.runner import Cell, EvalSettings, plan_cells, run_cells

__all__ = ["Cell", "EvalSettings", "plan_cells", "PerplexityResult", "perplexity", "run_cells"]
