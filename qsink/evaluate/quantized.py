"""A loaded fp model quantized for one cell: the one path from settings to a quantized model.

The runner, ``qsink ablate``, the benchmarks and lm-eval's ``qsink`` model type all quantize
through :func:`quantize_for`, so calibration windows are drawn the same way (from the settings'
``calib_data``, which :class:`EvalSettings` has already checked is not a test split) and the same
backend is used everywhere.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from qsink.data.text import Text
from qsink.data.windows import Windows
from qsink.evaluate.plan import Cell
from qsink.evaluate.settings import EvalSettings
from qsink.quant import get_scheme, quantize_
from qsink.quant.apply import make_handler, restorable, rewrite_base_
from qsink.quant.backends.bnb import to_bnb_
from qsink.quant.calibration import CalibrationCache, CalibrationStats, calibration_windows


def calibration_for(tokenizer, settings: EvalSettings, calib_text: Text) -> Windows:
    """The seeded calibration windows of ``settings`` (``calib`` windows of ``ctx`` tokens)."""
    return calibration_windows(tokenizer, calib_text, settings.calib, settings.ctx, settings.seed)


def quantize_for(model, tokenizer, cell: Cell, settings: EvalSettings, calib: Windows | None, sqnr: bool | None = None,
                 shared: CalibrationStats | None = None, artifacts: dict | None = None) -> dict | None:
    """Quantize ``model`` in place for ``cell`` with the settings' backend; return the quantization
    report for the record (``None`` for the fp cell, which is left as it is). ``sqnr``: the per-linear
    SQNR pass (default: the settings' ``sqnr``); ``shared``: the fp model's calibration statistics;
    ``artifacts``: where a handler keeps what it learned (SpinQuant's rotations)."""
    if cell.scheme == "fp":
        return None
    if settings.backend == "bnb":
        return to_bnb_(model, cell.scheme, cell.handling)
    return quantize_(model, get_scheme(cell.scheme), cell.handling, calib, tokenizer, settings.options_for(cell.handling),
                     batch_size=settings.batch_size,
                     include=settings.include, sqnr=settings.sqnr if sqnr is None else sqnr, shared=shared,
                     artifacts=artifacts)


def calibration_cache(directory: Path, model, model_sha: str, settings: EvalSettings, calib: Windows) -> CalibrationCache:
    """Where ``model``'s calibration statistics on ``calib`` are kept on disk: keyed by the model's weights (and the
    rewrite it carries), the calibration windows' tokens, dtype, device and batch size."""
    import sys

    base = getattr(model, "qsink_base", None)
    p = next(model.parameters())
    where = {"model_sha256": model_sha, "basis": None if base is None else list(base[0]),
             "windows_sha256": hashlib.sha256(calib.input_ids.numpy().tobytes()).hexdigest(),
             "n_windows": calib.n_windows, "ctx": calib.ctx, "batch_size": settings.batch_size, "dtype": str(p.dtype),
             "device": p.device.type}
    return CalibrationCache(directory, where, modules=() if base is None else (sys.modules[type(base[1]).__module__],))


def shared_calibration(model, tokenizer, cells: list[Cell], settings: EvalSettings, calib: Windows,
                       cache: CalibrationCache | None = None) -> CalibrationStats | None:
    """The calibration statistics of ``model`` (the fp model, or a rewritten one that ``cells`` start from) for
    ``cells``, with what they need declared so that one pass collects it (None for the bitsandbytes backend,
    which calibrates nothing); kept in ``cache`` when given."""
    if settings.backend != "fake":
        return None
    from qsink.models.adapter import adapter_for

    stats = CalibrationStats(model, adapter_for(model), calib, settings.batch_size, tokenizer, cache=cache)
    for cell in cells:
        if cell.scheme != "fp":
            stats.declare(make_handler(cell.handling, settings.options_for(cell.handling)).shared_needs(get_scheme(cell.scheme)))
    return stats


def rewrite_key(cell: Cell, settings: EvalSettings) -> tuple | None:
    """The rewrite of the fp model ``cell`` can share with other cells (None: it starts from the fp model)."""
    if cell.scheme == "fp" or settings.backend != "fake":
        return None
    return make_handler(cell.handling, settings.options_for(cell.handling)).rewrite_key()


@dataclass
class Start:
    """The model a cell is quantized from, and how: ``in_place`` (then :func:`~qsink.quant.apply.restore_` gives
    it back) or on a copy; the calibration statistics of that model; the seconds this cell spent copying and, for
    the first cell of a shared rewrite, rewriting."""

    model: object
    in_place: bool
    shared: CalibrationStats | None
    copy_s: float = 0.0
    rewrite_s: float = 0.0


class Starts:
    """Where each cell of one model starts: the fp model, or the fp model rewritten once for every cell whose
    handling rewrites it the same way (Hadamard's seeded rotation, whatever the scheme), kept while cells need
    it; with each one's calibration statistics, collected by one pass when first asked for."""

    def __init__(self, fp_model, tokenizer, cells: list[Cell], settings: EvalSettings, calib: Windows | None,
                 model_sha: str = "", cache_dir: Path | None = None):
        self.fp, self.tokenizer, self.settings, self.calib = fp_model, tokenizer, settings, calib
        self.model_sha, self.cache_dir = model_sha, cache_dir
        self.keys = {c: rewrite_key(c, settings) for c in cells}
        self.left = {k: sum(1 for v in self.keys.values() if v == k) for k in set(self.keys.values()) if k is not None}
        self.cells = cells
        self.bases: dict[tuple, object] = {}
        self.stats: dict[tuple | None, CalibrationStats | None] = {}
        if calib is not None:
            self.stats[None] = shared_calibration(fp_model, tokenizer, [c for c in cells if self.keys[c] is None],
                                                  settings, calib, self._cache(fp_model))

    def _handler(self, cell: Cell):
        return make_handler(cell.handling, self.settings.options_for(cell.handling))

    def _cache(self, model) -> CalibrationCache | None:
        if self.cache_dir is None or self.settings.backend != "fake":
            return None
        cache = calibration_cache(self.cache_dir, model, self.model_sha, self.settings, self.calib)
        if self.settings.force and cache.path.exists():  # --force recomputes everything, the statistics too
            cache.path.unlink()
        return cache

    def start(self, cell: Cell, live_fp: bool) -> Start:
        """``live_fp``: the fp model runs beside the cell (the exact KLD), so a cell cannot quantize it in place."""
        key = self.keys[cell]
        include = self.settings.include
        if key is None:
            t0 = time.perf_counter()
            in_place = cell.scheme == "fp" or (self.settings.backend == "fake" and not live_fp
                                               and restorable(self.fp, self._handler(cell), include))
            model = self.fp if in_place else copy.deepcopy(self.fp)
            return Start(model, in_place, self.stats.get(None), copy_s=time.perf_counter() - t0)
        rewrite_s = 0.0
        if key not in self.bases:
            t0 = time.perf_counter()
            self.bases[key] = rewrite_base_(copy.deepcopy(self.fp), make_handler(cell.handling,
                                                                                self.settings.options_for(cell.handling)))
            rewrite_s = time.perf_counter() - t0
            if self.calib is not None:
                self.stats[key] = shared_calibration(self.bases[key], self.tokenizer,
                                                     [c for c in self.cells if self.keys[c] == key], self.settings,
                                                     self.calib, self._cache(self.bases[key]))
        self.left[key] -= 1
        shared = self.stats.get(key)
        t0 = time.perf_counter()
        if self.left[key] == 0:  # the last cell of this rewrite takes the rewritten model itself
            return Start(self.bases.pop(key), False, self.stats.pop(key, None), rewrite_s=rewrite_s)
        base = self.bases[key]
        in_place = restorable(base, self._handler(cell), include)
        model = base if in_place else copy.deepcopy(base)
        return Start(model, in_place, shared, copy_s=time.perf_counter() - t0, rewrite_s=rewrite_s)
