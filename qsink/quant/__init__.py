"""Quantization: schemes (and, later, primitives, outlier handling and model surgery)."""

from qsink.quant.schemes import SCHEMES, Scheme, get_scheme

__all__ = ["SCHEMES", "Scheme", "get_scheme"]
