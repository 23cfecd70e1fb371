"""GPTQ weight quantization (Frantar et al. 2023, "GPTQ", arXiv 2210.17323), written for qsink.

For a linear with calibration inputs X, GPTQ quantizes the weight one input column at a time and
spreads each column's rounding error over the columns not yet quantized, using the inverse
Hessian ``H^-1`` of the layer-wise loss ``|XW^T - XQ^T|^2`` (``H = 2 X^T X``, damped by 1% of its
mean diagonal). The inverse is taken once through its upper Cholesky factor, and error updates are
applied lazily in blocks of 128 columns. Scales: per output row from the whole row (per-channel),
or per group from the (already error-updated) columns of that group.

qsink's variant: every linear's Hessian comes from the fp model's inputs in one calibration pass
(not layer-by-layer on the partly quantized model), which is cheaper and a little less accurate.
Integer weight formats only; activations keep the scheme's quantizer.
"""

from __future__ import annotations

import math

import torch

from qsink.errors import QsinkError
from qsink.quant import primitives as P
from qsink.quant.handling.base import Handler, register


def _fake_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero) * scale


def _params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point (each (rows, 1)) of ``w`` under the documented int rules."""
    _, scale, zero, _ = P.quantize_int(w, bits, symmetric, "row")
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, symmetric: bool = True,
                  group: int | None = None, damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """The GPTQ-quantized (dequantized, float) version of ``weight`` (out, in) given ``hessian`` (in, in)."""
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    n = W.shape[1]
    qmin, qmax = P.int_range(bits, symmetric)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, device=H.device)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise QsinkError("GPTQ: the calibration Hessian is not positive definite; use more --calib windows") from None
    if group:
        block = group * math.ceil(block / group)  # a group never straddles two blocks
    else:
        scale, zero = _params(W, bits, symmetric)
    Q = torch.zeros_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if group and i % group == 0:
                scale, zero = _params(W1[:, i : i + group], bits, symmetric)
            w = W1[:, i]
            q = _fake_with(w[:, None], scale, zero, qmin, qmax)[:, 0]
            Q[:, i1 + i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err[:, i] = err
        W[:, i2:] -= Err @ Hinv[i1:i2, i2:]
    return Q.to(weight.dtype)


@register
class GPTQ(Handler):
    name = "gptq"
    description = "GPTQ weight quantization with inverse-Hessian error compensation (arXiv 2210.17323), qsink's implementation"
    needs_calibration = True

    def __init__(self, damp: float = 0.01, block: int = 128):
        self.damp, self.block = float(damp), int(block)
        self.n_layers = 0

    def check(self, scheme) -> None:
        if scheme.weight is None or scheme.weight.dtype != "int":
            raise QsinkError(f"gptq quantizes integer weights, and {scheme.name} has "
                             f"{'no weight quantization' if scheme.weight is None else scheme.weight.dtype + ' weights'}; "
                             "use it with w4a16, w4a8, w4a4, w8a8")

    def install(self, model, ctx) -> list:
        for m in model.modules():
            if hasattr(m, "collect_hessian"):
                m.collect_hessian = True
        return []

    @torch.no_grad()
    def after_calibration(self, qlinears: dict) -> None:
        for q in qlinears.values():
            if q.hessian is None or q.weight_fmt is None:
                continue
            f = q.weight_fmt
            group = f.granularity.size if f.granularity.kind == "group" else None
            q.weight_q = gptq_quantize(q.weight_fp, q.hessian, f.bits, f.symmetric, group, self.damp, self.block)
            q.hessian = None
            self.n_layers += 1

    def shared_needs(self, scheme) -> set[str]:
        return super().shared_needs(scheme) | {"hessian"}

    def report(self) -> dict:
        return {"damp": self.damp, "block": self.block, "n_linears": self.n_layers,
                "hessian_from": "fp inputs of every linear, one calibration pass"}
