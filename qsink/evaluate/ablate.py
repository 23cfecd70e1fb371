"""Which linear layer's quantization does the damage? One-at-a-time exemption on a quantized model.

For a model quantized for a cell, each QLinear in turn gets its input activations (``act``) or its
weights (``weight``) back in full precision (:func:`qsink.quant.exempt.exempt`) while everything
else stays quantized, and the perplexity is measured again. The share of the damage a linear
accounts for is ``recovered = (Δ_all − Δ_exempt) / Δ_all`` (1: exempting it alone removes the whole
loss; around 0: it does not matter; above 1: the others' errors partly cancel it). Effects do not
add up in general: the rows are single exemptions, not a decomposition.

:func:`ablate` is ``qsink ablate`` as a function: it checks everything before loading, quantizes
through :func:`qsink.evaluate.quantized.quantize_for` like every cell, and stores the result as a
record of schema :data:`ABLATION_SCHEMA` (found again by its identity, so a rerun is free).

Example:
    >>> result = linear_ablation(qmodel, tok, windows, fp_ppl=10.3)   # doctest: +SKIP
    >>> r = result["rows"][0]; r["linear"], r["part"], r["recovered"]  # doctest: +SKIP
    ('0.mlp.down_proj', 'act', 0.99)
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qsink.data.text import Text
from qsink.data.windows import Windows, make_windows
from qsink.errors import QsinkError
from qsink.evaluate.perplexity import perplexity
from qsink.evaluate.plan import Cell, plan_cells
from qsink.evaluate.quantized import calibration_for, quantize_for
from qsink.evaluate.runner import identity
from qsink.evaluate.settings import EvalSettings
from qsink.models import check_ctx, load, resolve
from qsink.quant.exempt import PARTS, check_selection, exempt, exemptions
from qsink.records import RecordStore, cell_key, env_info

ABLATION_SCHEMA = "qsink.ablation/1"


def linear_ablation(model, tokenizer, windows: Windows, fp_ppl: float, parts: tuple[str, ...] = PARTS,
                    batch_size: int = 8, on_step: Callable[[str], None] | None = None, only: str | None = None) -> dict:
    """Perplexity of the quantized model with each linear's ``parts`` exempted in turn.

    Returns ``{"ppl": all-quantized ppl, "delta_ppl_pct": ..., "rows": [...]}`` with rows sorted
    by ``recovered``, largest first. Parts a linear does not quantize (``act`` under a weight-only
    scheme) are skipped; ``only`` (a regular expression searched in names such as
    ``11.mlp.down_proj``) restricts the exemptions to matching linears.
    """
    steps = exemptions(model, parts, only)
    ppl_all = perplexity(model, tokenizer, windows, batch_size=batch_size).ppl
    d_all = 100 * (ppl_all / fp_ppl - 1)
    rows = []
    for name, q, part in steps:
        with exempt(q, part):
            ppl = perplexity(model, tokenizer, windows, batch_size=batch_size).ppl
        d = 100 * (ppl / fp_ppl - 1)
        rows.append({"linear": name, "part": part, "ppl": ppl, "delta_ppl_pct": d,
                     "recovered": (d_all - d) / d_all if d_all != 0 else float("nan")})
        if on_step:
            on_step(f"{name} {part}")
    rows.sort(key=lambda r: -(r["recovered"] if r["recovered"] == r["recovered"] else -1e9))
    return {"ppl": ppl_all, "fp_ppl": fp_ppl, "delta_ppl_pct": d_all, "rows": rows}


@dataclass
class AblationOutcome:
    path: Path
    doc: dict
    skipped: bool  # an ablation with the same identity was already stored


def check_request(scheme: str, handling: str, settings: EvalSettings, parts: tuple[str, ...], only: str | None) -> None:
    """Everything about an ablation that can be refused before a model is loaded."""
    if scheme == "fp":
        raise QsinkError("--scheme fp quantizes nothing, so there is nothing to ablate; name a quantized scheme ('qsink schemes')")
    if settings.backend != "fake":
        raise QsinkError("ablation exempts qsink's fake-quantized linears one at a time; use --backend fake")
    plan_cells([scheme], [handling])  # an unknown scheme or handling, or a meaningless pair
    check_selection(parts, only)


def ablate(spec, scheme: str, handling: str, text: Text, calib_text: Text, settings: EvalSettings, store: RecordStore,
           parts: tuple[str, ...] = PARTS, only: str | None = None, force: bool = False, log: Callable[[str], None] = print,
           progress_factory: Callable[[str, int], Callable[[int], None]] | None = None) -> AblationOutcome:
    """``qsink ablate``: the fp perplexity, the quantized one, and one row per exemption, stored as a record.

    ``progress_factory(description, total)`` returns a callback advanced once per exemption.
    """
    check_request(scheme, handling, settings, parts, only)
    store.ensure_writable()
    res = resolve(spec)
    cell = Cell(scheme, handling)
    ident = identity(res, cell, text, settings, calib_text.sha256) | {"kind": "ablation", "parts": list(parts),
                                                                             "only": only}
    key = cell_key(ident)
    found = None if force else store.find_ok(key)
    if found:
        return AblationOutcome(found[0], found[1], skipped=True)
    fp_model, tok = load(res, dtype=settings.dtype, device=settings.device, log=log)
    check_ctx(fp_model, settings.ctx, res.name)
    windows = make_windows(tok, text, settings.ctx, settings.max_tokens)
    model = copy.deepcopy(fp_model)
    quantize_for(model, tok, cell, settings, calibration_for(tok, settings, calib_text), sqnr=False)
    n_steps = len(exemptions(model, parts, only))  # an --only that matches no linear fails here, before any forward pass
    fp_ppl = perplexity(fp_model, tok, windows, batch_size=settings.batch_size).ppl
    del fp_model
    advance = progress_factory(f"{res.name} {cell.label}", n_steps) if progress_factory else None
    result = linear_ablation(model, tok, windows, fp_ppl, parts=parts, batch_size=settings.batch_size, only=only,
                             on_step=(lambda _: advance(1)) if advance else None)
    doc = {"schema": ABLATION_SCHEMA, "key": key, "status": "ok", "identity": ident, "model": res.to_dict(),
           "scheme": scheme, "handling": handling, "data": text.name, "data_sha256": text.sha256, "ctx": settings.ctx,
           "max_tokens": settings.max_tokens, "calib": settings.calib, "calib_data": settings.calib_data,
           "seed": settings.seed, "parts": list(parts), "only": only, **result, "env": env_info(),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    suffix = f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', only)}" if only else ""
    return AblationOutcome(store.write(doc, f"{res.name}__ablate-{scheme}-{handling}{suffix}"), doc, skipped=False)
