"""Run evaluation cells (model x scheme on one text) and write one record per cell.

Everything that can be checked is checked before any compute: scheme names, the results
directory, model files. A cell whose ``ok`` record exists is skipped unless ``force``; records
are written atomically, so an interrupted run leaves only complete records behind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from qsink.data.corpora import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate.perplexity import perplexity
from qsink.models import ResolvedModel, check_ctx, load, resolve
from qsink.quant.schemes import get_scheme
from qsink.results.record import cell_key, make_record
from qsink.results.store import RecordStore


@dataclass
class EvalSettings:
    ctx: int = 512  # tokens per window
    max_tokens: int | None = 12288  # text tokens used; keeps a 135M run near a minute on 2 CPU cores
    batch_size: int = 4  # windows per forward
    dtype: str = "fp32"
    device: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    force: bool = False  # recompute cells whose record exists


@dataclass
class CellOutcome:
    model: str
    scheme: str
    path: Path
    record: dict
    skipped: bool  # found an existing record


def identity(model_sha: str, scheme: dict, text: Text, s: EvalSettings) -> dict:
    return {"model_sha256": model_sha, "scheme": scheme["name"], "scheme_config": scheme, "data_sha256": text.sha256,
            "ctx": s.ctx, "max_tokens": s.max_tokens, "dtype": s.dtype, "seed": s.seed}


def run_cells(
    model_specs: list[str | ResolvedModel],
    scheme_names: list[str],
    text: Text,
    settings: EvalSettings,
    store: RecordStore,
    log: Callable[[str], None] = print,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
) -> list[CellOutcome]:
    schemes = [get_scheme(n).to_dict() for n in scheme_names]
    store.ensure_writable()
    resolved = [resolve(spec) for spec in model_specs]
    outcomes: list[CellOutcome] = []
    for res in resolved:
        todo = []
        for scheme in schemes:
            ident = identity(res.sha256, scheme, text, settings)
            found = None if settings.force else store.find_ok(cell_key(ident))
            if found:
                outcomes.append(CellOutcome(res.name, scheme["name"], found[0], found[1], skipped=True))
            else:
                todo.append((scheme, ident))
        if not todo:
            continue
        torch.manual_seed(settings.seed)
        model, tokenizer = load(res, dtype=settings.dtype, device=settings.device,
                                trust_remote_code=settings.trust_remote_code, log=log)
        check_ctx(model, settings.ctx, res.name)
        windows = make_windows(tokenizer, text, settings.ctx, settings.max_tokens)
        for scheme, ident in todo:
            on_batch = progress_factory(f"{res.name} · {scheme['name']}", windows.n_windows) if progress_factory else None
            t0 = time.perf_counter()
            config = {
                "model": {**res.to_dict(), "family": model.config.model_type,
                          "n_params": sum(p.numel() for p in model.parameters()),
                          "n_layers": getattr(model.config, "num_hidden_layers", None)},
                "scheme": scheme,
                "data": windows.describe(),
                "eval": {k: v for k, v in asdict(settings).items() if k not in ("force",)}
                | {"device": str(next(model.parameters()).device)},
            }
            try:
                result = perplexity(model, tokenizer, windows, settings.batch_size, on_batch=on_batch)
            except QsinkError as e:
                record = make_record(ident, config, None, {"wall_s": time.perf_counter() - t0}, status="failed", error=str(e))
            else:
                metrics = result.to_dict()
                timing = {"wall_s": metrics.pop("wall_s"), "tokens_per_s": metrics.pop("tokens_per_s")}
                record = make_record(ident, config, metrics, timing)
            path = store.write(record, f"{res.name}__{scheme['name']}")
            outcomes.append(CellOutcome(res.name, scheme["name"], path, record, skipped=False))
        del model
    return outcomes
