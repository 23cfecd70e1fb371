"""Run evaluation cells (model x scheme x outlier handling on one text), one record per cell.

Everything that can be checked is checked before any compute: scheme and handling names and their
combinations, the results directory, model files. For each model the fp cell is evaluated first
(it is the reference of every delta); each quantized cell starts from a fresh copy of the loaded fp
model. A cell whose ``ok`` record exists is skipped unless ``force``; a cell that fails (a
non-finite loss, say) is recorded as failed with its reason and the others go on. Records are
written atomically, so an interrupted run leaves only complete records behind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from qsink.data.resolve import resolve_data
from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate import agreement
from qsink.evaluate.agreement import Agreement, Reference, ReferenceBuilder
from qsink.evaluate.lmeval import run_tasks
from qsink.evaluate.perplexity import perplexity
from qsink.evaluate.settings import EvalSettings
from qsink.files import qsink_home
from qsink.measure.workflow import MeasureOptions, measure_model
from qsink.models import ResolvedModel, check_ctx, load, resolve
from qsink.evaluate.plan import Cell
from qsink.evaluate.quantized import Starts, calibration_for, quantize_for
from qsink.quant import get_scheme
from qsink.quant.apply import kept_token_fraction, restore_
from qsink.records.record import PROFILE_FIELDS, cell_key, make_record
from qsink.records.store import RecordStore


@dataclass
class CellOutcome:
    model: str
    cell: Cell
    path: Path
    record: dict
    skipped: bool  # found an existing record
    write_s: float = 0.0  # writing the record


def identity(model: ResolvedModel, cell: Cell, text: Text, s: EvalSettings, calib_sha: str | None) -> dict:
    scheme = get_scheme(cell.scheme).to_dict()
    ident = {**model.key_fields(), "scheme": cell.scheme, "handling": cell.handling, "scheme_config": scheme,
             "data_sha256": text.sha256, "ctx": s.ctx, "max_tokens": s.max_tokens, "dtype": s.dtype, "seed": s.seed}
    if cell.scheme != "fp":
        ident.update(calib=s.calib, calib_data=s.calib_data, calib_sha256=calib_sha, backend=s.backend)
        if s.include:
            ident["include"] = sorted(s.include)
        if s.kld_topk != agreement.DEFAULT_TOPK:  # the default keeps the keys of records made before it existed
            ident["kld_topk"] = s.kld_topk
        if s.options_for(cell.handling):  # likewise: a handling run with its defaults keeps its key
            ident["handling_options"] = s.options_for(cell.handling)
    if s.tasks:
        ident.update(tasks=sorted(s.tasks), task_limit=s.limit, num_fewshot=s.num_fewshot)
    return ident


def finished(store: RecordStore, ident: dict, log=None, sqnr: bool = False) -> tuple[Path, dict] | None:
    """The cell's ok record if it holds everything this version computes; a quantized cell recorded
    before the agreement metrics (KL divergence, same top) existed is not finished, and runs again, as
    is one recorded without the per-linear SQNR when ``sqnr`` asks for it."""
    found = store.find_ok(cell_key(ident))
    if found and ident["scheme"] != "fp" and "kld_mean" not in found[1].get("metrics", {}):
        if log:
            log(f"{found[0].name} predates the agreement metrics (KL divergence, same top); running it again")
        return None
    if found and sqnr and ident["scheme"] != "fp" and ident.get("backend") == "fake" \
            and not found[1].get("config", {}).get("quant", {}).get("sqnr_db"):
        if log:
            log(f"{found[0].name} has no per-linear SQNR and --sqnr asks for it; running it again")
        return None
    return found


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
    on_model: Callable[[Cell, object, object, object], None] | None = None,
    calib_cache: Path | bool = True,
) -> list[CellOutcome]:
    """Evaluate ``cells`` on each model (see the module docstring). ``on_model(cell, model, windows, calib)`` is
    called with each cell's model once it is evaluated (``qsink bench matrix`` times a plain forward there).
    ``calib_cache``: where the calibration statistics are kept between runs (True: ``$QSINK_HOME/calibration``;
    False: nowhere)."""
    cache_dir = (qsink_home() / "calibration" if calib_cache is True else None) if isinstance(calib_cache, bool) \
        else Path(calib_cache)
    store.ensure_writable()
    resolved = [resolve(spec) for spec in model_specs]
    if any(c.scheme != "fp" for c in cells) and calib_text is None:
        raise QsinkError("quantized cells need calibration text")
    calib_sha = calib_text.sha256 if calib_text else None
    outcomes: list[CellOutcome] = []
    for res in resolved:
        todo, fp_record = [], None
        for cell in cells:
            ident = identity(res, cell, text, settings, calib_sha)
            found = None if settings.force else finished(store, ident, log, sqnr=settings.sqnr)
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
        starts = Starts(model, tokenizer, [c for c, _ in todo], settings, calib, res.pin, cache_dir)
        refs = References(store, res, windows, settings)
        for cell, ident in todo:
            record = _run_cell(res, cell, ident, model, tokenizer, windows, calib, settings, fp_record, progress_factory,
                               log, refs, starts, on_model,
                               artifacts={"dir": store.root / "rotations", "model_sha256": res.pin})
            if prof is not None:
                record["profile"] = prof
            if cell.scheme == "fp" and record["status"] == "ok":
                fp_record = record
            t_write = time.perf_counter()
            path = store.write(record, f"{res.name}__{cell.label}")
            outcomes.append(CellOutcome(res.name, cell, path, record, skipped=False,
                                        write_s=time.perf_counter() - t_write))
            if on_cell:
                on_cell(outcomes[-1])
        del model
    return outcomes


def run_matrix(model_specs: list[str], cells: list[Cell], settings: EvalSettings, store: RecordStore,
               data: str | None = None, text_file: str | Path | None = None, log: Callable[[str], None] = print,
               progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
               on_cell: Callable[[CellOutcome], None] | None = None,
               calib_cache: Path | bool = True) -> tuple[Text, list[CellOutcome]]:
    """``qsink evaluate``: resolve the models and texts (bad paths fail before any text is fetched), then
    :func:`run_cells`. Returns the evaluation text and one outcome per (model, cell)."""
    store.ensure_writable()
    resolved = [resolve(m) for m in model_specs]
    text = resolve_data(data, str(text_file) if text_file else None, log=log)
    calib_text = resolve_data(settings.calib_data, None, log=log) if any(c.scheme != "fp" for c in cells) else None
    return text, run_cells(resolved, cells, text, settings, store, calib_text=calib_text, log=log,
                           progress_factory=progress_factory, on_cell=on_cell, calib_cache=calib_cache)


class References:
    """The fp reference of one model on one set of windows: stored beside the records under
    ``references/`` and keyed like them, built by the fp cell's own pass (or by a pass of its own
    when the fp cell was already done), loaded and checked by every quantized cell."""

    def __init__(self, store: RecordStore, res: ResolvedModel, windows, settings: EvalSettings):
        self.topk, self.windows, self.force = settings.kld_topk, windows, settings.force
        self.identity = agreement.reference_identity(res.sha256, windows, settings.kld_topk, settings.dtype, res.commit)
        self.key = agreement.reference_key(self.identity)
        self.path = store.root / "references" / f"{store.path_for(res.name, self.key).stem}.npz"
        self._ref: Reference | None = None

    def builder(self, model, tokenizer) -> ReferenceBuilder | None:
        """An observer for the fp pass, if a reference is wanted and missing or ``--force`` given
        (``--kld-topk 0`` stores none)."""
        if self.topk == 0 or (self.path.exists() and not self.force):
            return None
        return ReferenceBuilder(model, tokenizer, self.windows, self.topk, self.identity)

    def keep(self, builder: ReferenceBuilder) -> dict:
        self._ref = builder.reference()
        t0 = time.perf_counter()
        self._ref.save(self.path)
        return self.describe() | {"write_s": time.perf_counter() - t0}

    def describe(self) -> dict:
        """Where the reference is, its size, and what building it added to the fp pass (``build_s``)."""
        ref = self.get()
        return {"path": f"references/{self.path.name}", "key": self.key, "topk": self.topk, "positions": ref.n,
                "bytes": self.path.stat().st_size, "build_s": ref.build_s}

    def get(self) -> Reference:
        if self._ref is None:
            self._ref = Reference.load(self.path, self.key)
        return self._ref

    def agreement_for(self, fp_model, tokenizer, batch_size: int, log) -> Agreement:
        """The observer of a quantized cell's pass; builds the reference first if it is missing."""
        if self.topk == 0:
            return Agreement(self.windows.n_scored, fp_model=fp_model, tokenizer=tokenizer, windows=self.windows)
        if not self.path.exists():
            log(f"building the fp reference {self.path.name} (top-{self.topk} of every scored position) for the KL divergence")
            b = ReferenceBuilder(fp_model, tokenizer, self.windows, self.topk, self.identity)
            perplexity(fp_model, tokenizer, self.windows, batch_size, observers=[b])
            self.keep(b)
        return Agreement(self.windows.n_scored, reference=self.get())


def model_fields(config) -> dict:
    """What the leaderboard shows about a model: family, size, and qsink's variant switches."""
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    fields = {"family": config.model_type, "n_layers": getattr(text, "num_hidden_layers", None),
              "hidden_size": getattr(text, "hidden_size", None)}
    if config.model_type == "qsink":
        from qsink.models.family.config import SWITCHES

        fields["variant"] = {k: getattr(config, k) for k in SWITCHES}
    return fields


def _run_cell(res, cell, ident, fp_model, tokenizer, windows, calib, settings, fp_record, progress_factory,
              log=print, refs: References | None = None, starts: Starts | None = None, on_model=None,
              artifacts: dict | None = None) -> dict:
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
        observers, builder, agree = [], None, None
        if refs is not None and cell.scheme == "fp":
            builder = refs.builder(fp_model, tokenizer)
            observers = [builder] if builder else []
        elif refs is not None:
            agree = refs.agreement_for(fp_model, tokenizer, settings.batch_size, log)
            observers = [agree]
        # a handling that rewrites nothing quantizes the fp model itself, one that rewrites it as other cells do
        # quantizes the rewritten model they share, and either is undone exactly afterwards; the exact live KLD
        # (--kld-topk 0) runs the fp model beside the cell, so that cell quantizes a copy
        start = starts.start(cell, live_fp=settings.kld_topk == 0)
        model, in_place = start.model, start.in_place
        try:
            quant_report = quantize_for(model, tokenizer, cell, settings, calib, shared=start.shared,
                                        artifacts=artifacts)
            if quant_report is not None and start.rewrite_s:
                quant_report["timing"]["rewrite_s"] = start.rewrite_s
            prep_s = time.perf_counter() - t0
            result = perplexity(model, tokenizer, windows, settings.batch_size, on_batch=on_batch, observers=observers)
            if on_model is not None:
                on_model(cell, model, windows, calib)
            kept = kept_token_fraction(model) if quant_report is not None else None
            tasks, task_s = None, 0.0
            if settings.tasks:
                t1 = time.perf_counter()
                tasks = run_tasks(model, tokenizer, list(settings.tasks), limit=settings.limit,
                                  num_fewshot=settings.num_fewshot, batch_size=settings.batch_size, seed=settings.seed,
                                  log=log)
                task_s = time.perf_counter() - t1
        finally:
            if in_place and getattr(model, "qsink_originals", None) is not None:
                restore_(model)
        if builder is not None:
            config["kld_reference"] = refs.keep(builder)
    except QsinkError as e:
        return make_record(ident, config, None, {"wall_s": time.perf_counter() - t0}, status="failed", error=str(e))
    metrics = result.to_dict()
    timing = {"wall_s": metrics.pop("wall_s"), "tokens_per_s": metrics.pop("tokens_per_s"), "prepare_s": prep_s,
              "copy_s": start.copy_s}
    if agree is not None:
        summary = agree.summary()
        metrics.update(agreement.flat_metrics(summary), agreement=summary)
        config["agreement"] = {"topk": settings.kld_topk, "definitions": agreement.DEFINITIONS,
                               **({"reference": refs.describe()} if settings.kld_topk else {})}
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
        if kept:
            metrics.update(kept_tokens=kept["kept_tokens"], kept_token_fraction=kept["fraction"])
    return make_record(ident, config, metrics, timing)
