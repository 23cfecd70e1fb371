"""Run evaluation cells (model x scheme x outlier handling on one text), one record per cell.

Everything that can be checked is checked before any compute: scheme and handling names and their
combinations, the results directory, model files. For each model the fp cell is evaluated first
(it is the reference of every delta); each quantized cell starts from a fresh copy of the loaded fp
model. A cell whose ``ok`` record exists is skipped unless ``force``; a cell that fails (a
non-finite loss, say) is recorded as failed with its reason and the others go on. Records are
written atomically, so an interrupted run leaves only complete records behind.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from qsink.data.resolve import resolve_data
from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate.lmeval import run_tasks
from qsink.evaluate.perplexity import perplexity
from qsink.evaluate.settings import EvalSettings
from qsink.measure.workflow import MeasureOptions, measure_model
from qsink.models import ResolvedModel, check_ctx, load, resolve
from qsink.evaluate.plan import Cell
from qsink.evaluate.quantized import calibration_for, quantize_for
from qsink.quant import get_scheme
from qsink.quant.apply import kept_token_fraction
from qsink.records.record import PROFILE_FIELDS, cell_key, make_record
from qsink.records.store import RecordStore


@dataclass
class CellOutcome:
    model: str
    cell: Cell
    path: Path
    record: dict
    skipped: bool  # found an existing record


def identity(model_sha: str, cell: Cell, text: Text, s: EvalSettings, calib_sha: str | None) -> dict:
    scheme = get_scheme(cell.scheme).to_dict()
    ident = {"model_sha256": model_sha, "scheme": cell.scheme, "handling": cell.handling, "scheme_config": scheme,
             "data_sha256": text.sha256, "ctx": s.ctx, "max_tokens": s.max_tokens, "dtype": s.dtype, "seed": s.seed}
    if cell.scheme != "fp":
        ident.update(calib=s.calib, calib_data=s.calib_data, calib_sha256=calib_sha, backend=s.backend)
        if s.include:
            ident["include"] = sorted(s.include)
    if s.tasks:
        ident.update(tasks=sorted(s.tasks), task_limit=s.limit, num_fewshot=s.num_fewshot)
    return ident


def model_profile(res, text: Text, settings: EvalSettings, store: RecordStore, loaded, log, progress_factory) -> dict | None:
    """The model's profile summary on the eval text (``qsink measure``, cached in the same store)."""
    if not settings.profile_samples:
        return None
    options = MeasureOptions(ctx=settings.ctx, samples=settings.profile_samples, dtype=settings.dtype,
                             device=settings.device)
    try:
        outcome = measure_model(res, text, store, options, loaded=loaded, log=log, progress_factory=progress_factory)
    except QsinkError as e:  # a model that cannot be profiled (NaNs, say) still gets its cells recorded
        log(f"{res.name}: no profile ({e})")
        return {"error": str(e)}
    summary = outcome.profile.summary
    return {k: summary.get(k) for k in PROFILE_FIELDS} | {"key": outcome.profile.data["key"],
                                                          "samples": settings.profile_samples}


def run_cells(
    model_specs: list[str | ResolvedModel],
    cells: list[Cell],
    text: Text,
    settings: EvalSettings,
    store: RecordStore,
    calib_text: Text | None = None,
    log: Callable[[str], None] = print,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    on_cell: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    store.ensure_writable()
    resolved = [resolve(spec) for spec in model_specs]
    if any(c.scheme != "fp" for c in cells) and calib_text is None:
        raise QsinkError("quantized cells need calibration text")
    calib_sha = calib_text.sha256 if calib_text else None
    outcomes: list[CellOutcome] = []
    for res in resolved:
        todo, fp_record = [], None
        for cell in cells:
            ident = identity(res.sha256, cell, text, settings, calib_sha)
            found = None if settings.force else store.find_ok(cell_key(ident))
            if found:
                outcomes.append(CellOutcome(res.name, cell, found[0], found[1], skipped=True))
                if on_cell:
                    on_cell(outcomes[-1])
                if cell.scheme == "fp":
                    fp_record = found[1]
            else:
                todo.append((cell, ident))
        if not todo:
            continue
        torch.manual_seed(settings.seed)
        model, tokenizer = load(res, dtype=settings.dtype, device=settings.device,
                                trust_remote_code=settings.trust_remote_code, log=log)
        check_ctx(model, settings.ctx, res.name)
        windows = make_windows(tokenizer, text, settings.ctx, settings.max_tokens)
        prof = model_profile(res, text, settings, store, (model, tokenizer), log, progress_factory)
        calib = None
        if calib_text is not None and any(c.scheme != "fp" for c, _ in todo):
            calib = calibration_for(tokenizer, settings, calib_text)
        for cell, ident in todo:
            record = _run_cell(res, cell, ident, model, tokenizer, windows, calib, settings, fp_record, progress_factory,
                               log)
            if prof is not None:
                record["profile"] = prof
            if cell.scheme == "fp" and record["status"] == "ok":
                fp_record = record
            path = store.write(record, f"{res.name}__{cell.label}")
            outcomes.append(CellOutcome(res.name, cell, path, record, skipped=False))
            if on_cell:
                on_cell(outcomes[-1])
        del model
    return outcomes


def run_matrix(model_specs: list[str], cells: list[Cell], settings: EvalSettings, store: RecordStore,
               data: str | None = None, text_file: str | Path | None = None, log: Callable[[str], None] = print,
               progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
               on_cell: Callable[[CellOutcome], None] | None = None) -> tuple[Text, list[CellOutcome]]:
    """``qsink evaluate``: resolve the models and texts (bad paths fail before any text is fetched), then
    :func:`run_cells`. Returns the evaluation text and one outcome per (model, cell)."""
    store.ensure_writable()
    resolved = [resolve(m) for m in model_specs]
    text = resolve_data(data, str(text_file) if text_file else None, log=log)
    calib_text = resolve_data(settings.calib_data, None, log=log) if any(c.scheme != "fp" for c in cells) else None
    return text, run_cells(resolved, cells, text, settings, store, calib_text=calib_text, log=log,
                           progress_factory=progress_factory, on_cell=on_cell)


def model_fields(config) -> dict:
    """What the leaderboard shows about a model: family, size, and qsink's variant switches."""
    fields = {"family": config.model_type, "n_layers": getattr(config, "num_hidden_layers", None),
              "hidden_size": getattr(config, "hidden_size", None)}
    if config.model_type == "qsink":
        from qsink.models.family.config import SWITCHES

        fields["variant"] = {k: getattr(config, k) for k in SWITCHES}
    return fields


def _run_cell(res, cell, ident, fp_model, tokenizer, windows, calib, settings, fp_record, progress_factory,
              log=print) -> dict:
    scheme = get_scheme(cell.scheme)
    on_batch = progress_factory(f"{res.name} · {cell.label}", windows.n_windows) if progress_factory else None
    config = {
        "model": {**res.to_dict(), **model_fields(fp_model.config),
                  "n_params": sum(p.numel() for p in fp_model.parameters())},
        "scheme": scheme.to_dict(),
        "handling": cell.handling,
        "data": windows.describe(),
        "eval": {k: v for k, v in asdict(settings).items() if k != "force"} | {"device": str(next(fp_model.parameters()).device)},
    }
    t0 = time.perf_counter()
    try:
        model = fp_model if cell.scheme == "fp" else copy.deepcopy(fp_model)
        quant_report = quantize_for(model, tokenizer, cell, settings, calib)
        prep_s = time.perf_counter() - t0
        result = perplexity(model, tokenizer, windows, settings.batch_size, on_batch=on_batch)
        tasks, task_s = None, 0.0
        if settings.tasks:
            t1 = time.perf_counter()
            tasks = run_tasks(model, tokenizer, list(settings.tasks), limit=settings.limit,
                              num_fewshot=settings.num_fewshot, batch_size=settings.batch_size, seed=settings.seed,
                              log=log)
            task_s = time.perf_counter() - t1
    except QsinkError as e:
        return make_record(ident, config, None, {"wall_s": time.perf_counter() - t0}, status="failed", error=str(e))
    metrics = result.to_dict()
    timing = {"wall_s": metrics.pop("wall_s"), "tokens_per_s": metrics.pop("tokens_per_s"), "prepare_s": prep_s}
    if tasks is not None:
        timing["tasks_s"] = task_s
        fp_tasks = (fp_record or {}).get("metrics", {}).get("tasks", {})
        for name, t in tasks.items():
            if name in fp_tasks and t.get("acc") is not None and fp_tasks[name].get("acc") is not None:
                t["delta_acc"] = t["acc"] - fp_tasks[name]["acc"]
        metrics["tasks"] = tasks
    if fp_record is not None and "ppl" in fp_record.get("metrics", {}):
        fp = fp_record["metrics"]
        metrics.update(fp_ppl=fp["ppl"], delta_ppl=metrics["ppl"] - fp["ppl"],
                       delta_ppl_pct=100 * (metrics["ppl"] - fp["ppl"]) / fp["ppl"], delta_bpb=metrics["bpb"] - fp["bpb"])
    if quant_report is not None:
        config["quant"] = quant_report
        for k in ("sqnr_db_mean", "sqnr_db_min", "sqnr_db_min_linear"):
            if k in quant_report:
                metrics[k] = quant_report[k]
        kept = kept_token_fraction(model)
        if kept:
            metrics.update(kept_tokens=kept["kept_tokens"], kept_token_fraction=kept["fraction"])
    return make_record(ident, config, metrics, timing)
