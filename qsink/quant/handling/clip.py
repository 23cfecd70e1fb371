"""Clipping: per-layer clipping ratios searched to minimise each linear's output error.

For every linear, on the input rows sampled during calibration (up to 256 per linear), the weight
ratio r_w (multiplying each scale's absmax) is chosen from a grid to minimise
``|X Q(W; r_w)^T - X W^T|^2``, then the activation ratio r_a to minimise
``|Q(X; r_a) Q(W; r_w)^T - X W^T|^2``. Integer formats only (block floating-point formats fix their
scales by rule).
"""

from __future__ import annotations

import torch

from qsink.errors import QsinkError
from qsink.quant.handling.base import Handler, register

GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4)


@register
class Clip(Handler):
    name = "clip"
    description = "per-layer clipping ratios for weights and activations, searched to minimise output MSE"
    needs_calibration = True
    needs_rows = True

    def __init__(self, weights: bool = True, activations: bool = True):
        self.weights, self.activations = bool(weights), bool(activations)
        self.chosen: dict[str, tuple[float, float]] = {}

    def check(self, scheme) -> None:
        fmts = [f for f in (scheme.weight, scheme.act) if f is not None]
        if not fmts:
            raise QsinkError(f"clip needs something quantized, and {scheme.name} quantizes nothing")
        if any(f.dtype != "int" for f in fmts):
            raise QsinkError(f"clip searches integer scales, and {scheme.name} uses "
                             f"{', '.join(sorted({f.dtype for f in fmts if f.dtype != 'int'}))}; use it with int schemes")

    @torch.no_grad()
    def after_calibration(self, qlinears: dict) -> None:
        for name, q in qlinears.items():
            if not q.calib_rows:
                continue
            X = torch.cat(q.calib_rows).to(q.weight_fp.device, q.weight_fp.dtype)
            ref = X @ q.weight_fp.T
            if self.weights and q.weight_fmt is not None:
                errs = [((X @ q.weight_fmt.fake(q.weight_fp, clip_ratio=r).T - ref).pow(2).sum(), r) for r in GRID]
                q.set_weight_clip(min(errs)[1])
            if self.activations and q.act_fmt is not None:
                errs = [((q.quantize_input(X, clip=r) @ q.weight_q.T - ref).pow(2).sum(), r) for r in GRID]
                q.act_clip = min(errs)[1]
            self.chosen[name] = (q.weight_clip, q.act_clip)

    def report(self) -> dict:
        if not self.chosen:
            return {}
        w = [v[0] for v in self.chosen.values()]
        a = [v[1] for v in self.chosen.values()]
        return {"grid": list(GRID), "weight_ratio_mean": sum(w) / len(w), "act_ratio_mean": sum(a) / len(a),
                "weight_ratio_min": min(w), "act_ratio_min": min(a)}
