"""Keeping one quantized linear's activations or weights in full precision: the surgery an ablation needs.

:func:`exempt` gives a :class:`QLinear` its full-precision input (``act``) or weights (``weight``)
back for the length of a block; :func:`exemptions` lists the (linear, part) pairs a model offers.
The experiment that measures each exemption's effect is :mod:`qsink.evaluate.ablate`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from qsink.errors import QsinkError
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
        check_selection(PARTS, only)
        layers = {n: q for n, q in layers.items() if re.search(only, n)}
        if not layers:
            raise QsinkError(f"--only {only!r} matches no quantized linear; names look like 0.self_attn.q_proj, 11.mlp.down_proj")
    return layers


def check_selection(parts: tuple[str, ...], only: str | None = None) -> None:
    """Refuse unknown parts or an invalid ``--only`` pattern before any model is loaded."""
    bad = [p for p in parts if p not in PARTS] or ([] if parts else ["(none)"])
    if bad:
        raise QsinkError(f"unknown part(s) {', '.join(bad)}; --parts takes {' and/or '.join(PARTS)}")
    if only:
        try:
            re.compile(only)
        except re.error as e:
            raise QsinkError(f"--only {only!r} is not a regular expression: {e}") from None


def exemptions(model, parts: tuple[str, ...] = PARTS, only: str | None = None) -> list[tuple[str, QLinear, str]]:
    """The (name, linear, part) exemptions an ablation runs, in order; parts a linear does not quantize
    (``act`` under a weight-only scheme) are left out."""
    check_selection(parts, only)
    return [(name, q, part) for name, q in selected(model, only).items() for part in parts
            if (q.act_fmt if part == "act" else q.weight_fmt) is not None]


__all__ = ["PARTS", "check_selection", "exempt", "exemptions", "qlinears", "selected"]
