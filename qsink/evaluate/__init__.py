"""Scoring: perplexity over token windows, and the runner that turns cells into records."""

from qsink.evaluate.perplexity import PerplexityResult, perplexity
from qsink.evaluate.runner import EvalSettings, run_cells

__all__ = ["EvalSettings", "PerplexityResult", "perplexity", "run_cells"]
