"""LLM.int8 mixed-precision decomposition (Dettmers et al. 2022, arXiv 2208.07339).

In each forward, input feature columns whose magnitude exceeds ``threshold`` anywhere in the batch
stay in high precision (with the matching weight columns, as in the paper; ``int8_weights=True``
instead keeps only int8 weights, as bitsandbytes' inference kernel does when it stores no fp16
weights); the rest go through the scheme's int8 quantizers. Only meaningful for int8 activations.
"""

from __future__ import annotations

from qsink.errors import QsinkError
from qsink.quant.handling.base import Handler, register


@register
class LLMInt8(Handler):
    name = "llm-int8"
    description = "mixed precision: input columns above a threshold (6.0) stay fp, the rest int8 (arXiv 2208.07339)"

    def __init__(self, threshold: float = 6.0, int8_weights: bool = False):
        self.threshold = float(threshold)
        self.int8_weights = bool(int8_weights)

    def check(self, scheme) -> None:
        if scheme.act is None or scheme.act.dtype != "int" or scheme.act.bits != 8:
            raise QsinkError(f"llm-int8 decomposes int8 activation matmuls, and {scheme.name} has "
                             f"{'no activation quantization' if scheme.act is None else str(scheme.act) + ' activations'}; "
                             "use it with w8a8, w8a8-static or w4a8")

    def linear_options(self, layer: int, name: str) -> dict:
        return {"outlier_threshold": self.threshold}

    def install(self, model, ctx) -> list:
        if self.int8_weights:
            for m in model.modules():
                if getattr(m, "outlier_threshold", None) is not None:
                    m.outlier_weights_fp = False
        return []

    def report(self) -> dict:
        return {"threshold": self.threshold, "int8_weights": self.int8_weights}
