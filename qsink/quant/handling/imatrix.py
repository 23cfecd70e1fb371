"""llama.cpp's importance matrix as an outlier-handling method for the GGUF schemes.

llama.cpp's ``llama-imatrix`` (``tools/imatrix/imatrix.cpp``) runs calibration text through the
model and keeps, for every matmul of a block weight, the mean of ``x_j^2`` over the tokens of each
input column ``j``; ``llama-quantize --imatrix`` then weights each element's error in the K-quant
scale search by it (and, for Q4_0 / Q5_0 files, gives the first eighth of ffn_down Q4_1 / Q5_1).
qsink collects the same statistic in its calibration pass (the fp model's inputs of every block
linear, after any input transform) and re-encodes each weight with it.

A model with massive activations has an importance matrix dominated by its spike channels: the
report gives, per linear, the share of the matrix's mass in its largest column and that column.

As in llama.cpp, the matrix weights the search of every K-quant and of Q4_0, Q4_1, Q5_0 and Q5_1
(``quantize_row_*_impl``); Q8_0 has no search and ignores it. The type rule's imatrix branch is
applied.
"""

from __future__ import annotations

import torch

from qsink.errors import QsinkError
from qsink.quant.handling.base import Handler, register
from qsink.models.adapter import n_gqa


@register
class IMatrix(Handler):
    name = "imatrix"
    description = "llama.cpp's importance matrix (mean x^2 per input column) in the GGUF quantization search; GGUF schemes"
    needs_calibration = True

    def __init__(self):
        self.scheme = None
        self.n_layers = 0
        self.n_gqa = 1
        self.per_linear: dict[str, dict] = {}

    def check(self, scheme) -> None:
        if scheme.weight is None or scheme.weight.dtype != "gguf":
            raise QsinkError(f"imatrix weights llama.cpp's GGUF quantization search, and {scheme.name} has no GGUF "
                             "weights; use it with a gguf-* scheme (qsink schemes lists them)")

    def prepare(self, model, adapter, calib, scheme) -> None:
        self.scheme = scheme
        self.n_layers = len(adapter.blocks(model))
        self.n_gqa = n_gqa(model)

    def install(self, model, ctx) -> list:
        for m in model.modules():
            if hasattr(m, "collect_sumsq"):
                m.collect_sumsq = True
        return []

    @torch.no_grad()
    def after_calibration(self, qlinears: dict) -> None:
        from qsink.quant.gguf_formats import K_QUANTS
        from qsink.quant.gguf_kquants import LEGACY_WEIGHTED

        for name, q in qlinears.items():
            if q.sumsq is None or q.weight_fmt is None or q.sumsq_rows == 0:
                continue
            imat = (q.sumsq / q.sumsq_rows).float()
            fmt = q.weight_fmt
            if self.scheme.ftype is not None and name != "lm_head":
                layer, lname = name.split(".", 1)
                fmt = self.scheme.weight_format_for(lname, int(layer), self.n_layers, q.in_features, self.n_gqa,
                                                    has_imatrix=True)
            used = fmt.dtype == "gguf" and fmt.gguf_type in K_QUANTS + LEGACY_WEIGHTED
            q.set_weight_format(fmt, imat if used else None)
            total = float(imat.sum())
            top = int(imat.argmax())
            self.per_linear[name] = {"type": fmt.gguf_type, "used": used, "top1_channel": top,
                                     "top1_share": float(imat[top]) / total if total > 0 else None}
            q.sumsq, q.sumsq_rows = None, 0

    def shared_needs(self, scheme) -> set[str]:
        return super().shared_needs(scheme) | {"sumsq"}

    def report(self) -> dict:
        shares = sorted(v["top1_share"] for v in self.per_linear.values() if v["top1_share"] is not None)
        return {"statistic": "mean of x^2 per input column of each block linear over the calibration windows (fp model)",
                "n_linears": len(self.per_linear), "n_weighted": sum(v["used"] for v in self.per_linear.values()),
                "top1_share_max": shares[-1] if shares else None,
                "top1_share_median": shares[len(shares) // 2] if shares else None,
                "per_linear": self.per_linear}
