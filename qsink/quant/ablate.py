"""Which linear layer's quantization does the damage? One-at-a-time exemption on a quantized model.

For a model already quantized with :func:`qsink.quant.quantize_`, each QLinear in turn gets its
input activations (``act``) or its weights (``weight``) back in full precision while everything
else stays quantized, and the perplexity is measured again. The share of the damage a linear
accounts for is ``recovered = (Δ_all − Δ_exempt) / Δ_all`` (1: exempting it alone removes the whole
loss; around 0: it does not matter; above 1: the others' errors partly cancel it). Effects do not
add up in general: the rows are single exemptions, not a decomposition.

Example:
    >>> rows = linear_ablation(qmodel, tok, windows, fp_ppl=10.3)     # doctest: +SKIP
    >>> rows[0]["linear"], rows[0]["part"], rows[0]["recovered"]      # doctest: +SKIP
    ('0.mlp.down_proj', 'act', 0.99)
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable

from qsink.data.windows import Windows
from qsink.errors import QsinkError
from qsink.evaluate.perplexity import perplexity
from qsink.quant.qlinear import QLinear

PARTS = ("act", "weight")


@contextmanager
def exempt(q: QLinear, part: str):
    """Within the block, ``q`` computes with full-precision activations (``act``) or weights (``weight``)."""
    if part == "act":
        saved = q.act_fmt
        q.act_fmt = None
        try:
            yield
        finally:
            q.act_fmt = saved
    elif part == "weight":
        saved = q.weight_q
        q.weight_q = q.weight_fp
        try:
            yield
        finally:
            q.weight_q = saved
    else:
        raise QsinkError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")


def qlinears(model) -> dict[str, QLinear]:
    found = {m.name: m for m in model.modules() if isinstance(m, QLinear)}
    if not found:
        raise QsinkError("the model has no quantized linear layers; quantize it first (qsink.quant.quantize_)")
    return found


def selected(model, only: str | None = None) -> dict[str, QLinear]:
    layers = qlinears(model)
    if only:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise QsinkError(f"--only {only!r} is not a regular expression: {e}") from None
        layers = {n: q for n, q in layers.items() if pattern.search(n)}
        if not layers:
            raise QsinkError(f"--only {only!r} matches no quantized linear; names look like 0.self_attn.q_proj, 11.mlp.down_proj")
    return layers


def exemptions(model, parts: tuple[str, ...] = PARTS, only: str | None = None) -> list[tuple[str, QLinear, str]]:
    """The (name, linear, part) exemptions an ablation runs, in order; parts a linear does not quantize
    (``act`` under a weight-only scheme) are left out."""
    for p in parts:
        if p not in PARTS:
            raise QsinkError(f"unknown part {p!r}; use one of {', '.join(PARTS)}")
    return [(name, q, part) for name, q in selected(model, only).items() for part in parts
            if (q.act_fmt if part == "act" else q.weight_fmt) is not None]


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


__all__ = ["PARTS", "exempt", "exemptions", "linear_ablation", "qlinears", "selected"]
