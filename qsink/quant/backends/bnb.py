"""bitsandbytes as a real-kernel backend (``--backend bnb``).

Supported: ``w8a8`` (``Linear8bitLt``, threshold 0: int8 matmul with per-token activation and
per-channel weight absmax scales), ``w8a8`` + ``llm-int8`` (threshold 6.0: outlier columns in
fp16), ``nf4`` and ``fp4`` (``Linear4bit``, blocks of 64, fp32 compute). The modules run in eval
mode, where ``Linear8bitLt`` is a real int8 matmul; it casts activations to fp16 first, so inputs
above 65,504 overflow (a real limit of the kernel, kept on purpose).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from qsink.errors import QsinkError
from qsink.models.adapter import adapter_for

SUPPORTED = {("w8a8", "none"): ("int8", 0.0), ("w8a8", "llm-int8"): ("int8", 6.0),
             ("nf4", "none"): ("nf4", None), ("fp4", "none"): ("fp4", None)}


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise QsinkError("--backend bnb needs bitsandbytes: pip install 'qsink[bnb]'") from None
    return bnb


def check(scheme_name: str, handling: str) -> None:
    if (scheme_name, handling) not in SUPPORTED:
        pairs = ", ".join(f"{s}+{h}" for s, h in SUPPORTED)
        raise QsinkError(f"the bnb backend implements {pairs}; {scheme_name}+{handling} runs with --backend fake")


def bnb_linear(linear: nn.Linear, kind: str, threshold: float | None) -> nn.Module:
    """A bitsandbytes module computing ``linear`` with real quantized kernels."""
    bnb = _bnb()
    w = linear.weight.detach().float().clone()
    if kind == "int8":
        m = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=threshold)
        m.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        m = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              quant_type=kind, compute_dtype=torch.float32)
        m.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=kind, blocksize=64,
                                     compress_statistics=False)  # no double quantization of the scales
    if linear.bias is not None:
        m.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
    return m.to(linear.weight.device).eval()


def kernel_dtype_4bit(device) -> str:
    """What bitsandbytes' 4-bit matmul computes in on ``device``.

    On CPUs with AVX512-BF16, bitsandbytes (0.49 on) runs a fused kernel that casts activations and
    scales to bf16 whatever the layer's ``compute_dtype``; elsewhere it dequantizes and computes in
    fp32. The level tables are the same either way; only the matmul's precision differs.
    """
    fused = getattr(_bnb().functional, "has_avx512bf16", lambda: False)
    return "bfloat16" if torch.device(device).type == "cpu" and fused() else "float32"


def to_bnb_(model: nn.Module, scheme_name: str, handling: str = "none") -> dict:
    """Replace every linear in the blocks with its bitsandbytes counterpart, in place."""
    check(scheme_name, handling)
    kind, threshold = SUPPORTED[(scheme_name, handling)]
    ad = adapter_for(model)
    ad.linearize_(model)  # GPT-2's Conv1D layers become nn.Linear first (bitsandbytes wraps Linear)
    n = 0
    for block in ad.blocks(model):
        for name, lin in list(ad.linears(block).items()):
            ad.set_module(block, name, bnb_linear(lin, kind, threshold))
            n += 1
    model.eval()
    report = {"backend": "bnb", "bnb_version": _bnb().__version__, "module": kind, "threshold": threshold, "n_linears": n}
    if kind != "int8":
        report["kernel_dtype"] = kernel_dtype_4bit(next(model.parameters()).device)
    return report
