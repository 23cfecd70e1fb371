"""Outlier-handling methods, one module each, looked up by name in :data:`HANDLERS`."""

from qsink.quant.handling import awq, clip, gptq, hadamard, llm_int8, smoothquant, token_keep  # noqa: F401  (registration)
from qsink.quant.handling import imatrix, spinquant  # noqa: F401  (registration)
from qsink.quant.handling.base import HANDLERS, Handler

__all__ = ["HANDLERS", "Handler"]
