"""Quantization: pure primitives, validated schemes, outlier handling and one surgery entry point."""

from qsink.quant.apply import check_combination, quantize_, restorable, restore_, set_mode
from qsink.quant.handling import HANDLERS
from qsink.quant.schemes import SCHEMES, QuantFormat, Scheme, get_scheme

__all__ = ["HANDLERS", "SCHEMES", "QuantFormat", "Scheme", "check_combination", "get_scheme", "quantize_", "restorable", "restore_", "set_mode"]
