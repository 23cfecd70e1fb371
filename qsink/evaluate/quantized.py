"""A loaded fp model quantized for one cell: the one path from settings to a quantized model.

The runner, ``qsink ablate``, the benchmarks and lm-eval's ``qsink`` model type all quantize
through :func:`quantize_for`, so calibration windows are drawn the same way (from the settings'
``calib_data``, which :class:`EvalSettings` has already checked is not a test split) and the same
backend is used everywhere.
"""

from __future__ import annotations

from qsink.data.text import Text
from qsink.data.windows import Windows
from qsink.evaluate.plan import Cell
from qsink.evaluate.settings import EvalSettings
from qsink.quant import get_scheme, quantize_
from qsink.quant.backends.bnb import to_bnb_
from qsink.quant.calibration import CalibrationStats, calibration_windows


def calibration_for(tokenizer, settings: EvalSettings, calib_text: Text) -> Windows:
    """The seeded calibration windows of ``settings`` (``calib`` windows of ``ctx`` tokens)."""
    return calibration_windows(tokenizer, calib_text, settings.calib, settings.ctx, settings.seed)


def quantize_for(model, tokenizer, cell: Cell, settings: EvalSettings, calib: Windows | None, sqnr: bool | None = None,
                 shared: CalibrationStats | None = None) -> dict | None:
    """Quantize ``model`` in place for ``cell`` with the settings' backend; return the quantization
    report for the record (``None`` for the fp cell, which is left as it is). ``sqnr``: the per-linear
    SQNR pass (default: the settings' ``sqnr``); ``shared``: the fp model's calibration statistics."""
    if cell.scheme == "fp":
        return None
    if settings.backend == "bnb":
        return to_bnb_(model, cell.scheme, cell.handling)
    return quantize_(model, get_scheme(cell.scheme), cell.handling, calib, tokenizer, batch_size=settings.batch_size,
                     include=settings.include, sqnr=settings.sqnr if sqnr is None else sqnr, shared=shared)


def shared_calibration(model, tokenizer, cells: list[Cell], settings: EvalSettings, calib: Windows) -> CalibrationStats | None:
    """The fp model's calibration statistics for ``cells``, with what they need declared so that one pass
    collects it (None for the bitsandbytes backend, which calibrates nothing)."""
    if settings.backend != "fake":
        return None
    from qsink.models.adapter import adapter_for
    from qsink.quant.apply import make_handler

    stats = CalibrationStats(model, adapter_for(model), calib, settings.batch_size, tokenizer)
    for cell in cells:
        if cell.scheme != "fp":
            stats.declare(make_handler(cell.handling).shared_needs(get_scheme(cell.scheme)))
    return stats
