"""Quantization primitives: pure tensor functions that never change their inputs.

Every ``quantize_*`` returns integer codes (or grid values) and the scales needed to undo it;
every ``fake_*`` returns ``dequantize(quantize(x))`` in the input's dtype. Scales are reduced
over *blocks along the last dimension*: the whole tensor (per-tensor), each row (per-channel for a
weight ``(out, in)``, per-token for activations ``(..., in)``), or groups of ``g`` consecutive
elements. When ``g`` does not divide the last dimension the last group is shorter: the tensor is
zero-padded to a multiple of ``g`` and the padding dropped afterwards (zeros never change an absmax,
and every range here includes zero).

Formats:

* INT-b, symmetric (``scale = absmax / (2^(b-1) - 1)``, codes clamped to ``[-2^(b-1), 2^(b-1)-1]``)
  or asymmetric (range ``[min(x, 0), max(x, 0)]`` over ``2^b - 1`` steps with an integer zero point);
  round half to even (``torch.round``).
* FP4 E2M1: magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}, round to nearest, ties to the even code,
  saturating at 6.
* MXFP4 (OCP Microscaling Formats spec v1.0): blocks of 32 E2M1 values sharing a power-of-two
  (E8M0) scale ``2^(floor(log2(absmax)) - 2)``, 2 being E2M1's largest exponent.
* NVFP4: blocks of 16 E2M1 values with an FP8-E4M3 block scale times an FP32 per-tensor scale
  ``absmax / (6 * 448)``.
* NF4 (QLoRA, arXiv 2305.14314): the 16 normal-float levels, blockwise absmax scale; FP4 weights
  as bitsandbytes defines them (its own 15-level table, blockwise absmax). Both match
  ``bitsandbytes.functional.quantize_4bit`` exactly (tested).
* FP8 E4M3 (the OCP "fn" variant, max 448, no infinities), round to nearest even, saturating.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------------------------------------
# blocks along the last dimension


def _blocks(x: torch.Tensor, block: int | None) -> tuple[torch.Tensor, int]:
    """View ``x`` as ``(..., n_blocks, block)``; ``block=None`` means the whole last dimension."""
    n = x.shape[-1]
    if block is None or block >= n:
        return x.unsqueeze(-2), 0
    pad = (-n) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), pad


def _unblocks(xb: torch.Tensor, pad: int) -> torch.Tensor:
    x = xb.reshape(*xb.shape[:-2], -1)
    return x[..., : x.shape[-1] - pad] if pad else x


def absmax(x: torch.Tensor, granularity: str, group: int | None = None) -> torch.Tensor:
    """Absmax per block, broadcastable against ``x``: 'tensor', 'row' or 'group'."""
    if granularity == "tensor":
        return x.abs().amax().reshape([1] * x.dim())
    if granularity == "row":
        return x.abs().amax(dim=-1, keepdim=True)
    if granularity == "group":
        xb, _ = _blocks(x, group)
        return xb.abs().amax(dim=-1, keepdim=True)
    raise ValueError(f"unknown granularity {granularity!r}")


# ---------------------------------------------------------------------------------------------
# integers


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    if not 2 <= bits <= 8:
        raise ValueError(f"integer quantization supports 2 to 8 bits, not {bits}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def quantize_int(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: str = "row",
                 group: int | None = None, clip_ratio: float = 1.0, scale: torch.Tensor | None = None):
    """Integer codes, scale and zero point (all float tensors), in blocks along the last dim.

    ``scale`` (symmetric only) overrides the computed scale, e.g. a static calibrated one.
    Returns ``(codes, scale, zero_point, pad)`` with ``codes`` in block layout when grouped.
    """
    qmin, qmax = int_range(bits, symmetric)
    xf = x.float()
    if granularity == "tensor":
        xb, pad = xf.reshape(1, -1).unsqueeze(-2), 0
    elif granularity in ("row", "group"):
        xb, pad = _blocks(xf, group if granularity == "group" else None)
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    if symmetric:
        if scale is None:
            amax = xb.abs().amax(dim=-1, keepdim=True) * clip_ratio
            scale = amax / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.clamp(torch.round(xb / scale), qmin, qmax)
        zero = torch.zeros_like(scale)
    else:
        lo = xb.amin(dim=-1, keepdim=True).clamp(max=0) * clip_ratio
        hi = xb.amax(dim=-1, keepdim=True).clamp(min=0) * clip_ratio
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / scale), qmin, qmax)
        codes = torch.clamp(torch.round(xb / scale) + zero, qmin, qmax)
    return codes, scale, zero, pad


def fake_int(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: str = "row",
             group: int | None = None, clip_ratio: float = 1.0, scale: torch.Tensor | None = None) -> torch.Tensor:
    codes, s, z, pad = quantize_int(x, bits, symmetric, granularity, group, clip_ratio, scale)
    deq = (codes - z) * s
    if granularity == "tensor":
        return deq.reshape(x.shape).to(x.dtype)
    return _unblocks(deq, pad).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# FP4 E2M1

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal, 6 = 1.5 * 2^2


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value (ties to the even code), saturating at +-6."""
    a = x.float().abs()
    mids = _E2M1_MIDS.to(a.device)
    idx = torch.bucketize(a, mids)  # mids[i-1] < a <= mids[i] -> i
    tie = a == mids[idx.clamp(max=len(mids) - 1)]
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    return torch.sign(x.float()) * E2M1_VALUES.to(a.device)[idx]


def fake_mxfp4(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    xb, pad = _blocks(x.float(), block)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    exp = torch.floor(torch.log2(amax.clamp_min(2.0**-127))) - E2M1_EMAX
    scale = torch.exp2(exp.clamp(-127, 127))
    return _unblocks(round_e2m1(xb / scale) * scale, pad).to(x.dtype)


def fake_nvfp4(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    xf = x.float()
    tensor_amax = xf.abs().amax()
    g = tensor_amax / (E2M1_MAX * E4M3_MAX) if tensor_amax > 0 else torch.tensor(1.0, device=x.device)
    xb, pad = _blocks(xf, block)
    block_scale = round_e4m3(xb.abs().amax(dim=-1, keepdim=True) / (E2M1_MAX * g))  # FP8 E4M3 code
    scale = block_scale * g
    q = round_e2m1(torch.where(scale > 0, xb / scale, torch.zeros_like(xb)))
    return _unblocks(q * scale, pad).to(x.dtype)


def fake_lut(x: torch.Tensor, levels: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Nearest of ``levels`` (sorted, in [-1, 1]) times a per-block absmax scale."""
    xb, pad = _blocks(x.float(), block)
    scale = xb.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    levels = levels.to(x.device)
    idx = torch.bucketize(xb / scale, (levels[1:] + levels[:-1]) / 2)
    return _unblocks(levels[idx] * scale, pad).to(x.dtype)


# QLoRA's normal-float levels (arXiv 2305.14314), as bitsandbytes stores them
NF4_VALUES = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])
# bitsandbytes' "fp4" levels: an E2M1-like grid normalised to 1 whose smallest step is 1/192, not 1/12
BNB_FP4_VALUES = torch.tensor([-1.0, -2 / 3, -0.5, -1 / 3, -0.25, -1 / 6, -1 / 192, 0.0,
                               1 / 192, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0])


def fake_nf4(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    return fake_lut(x, NF4_VALUES, block)


def fake_fp4(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """bitsandbytes-compatible FP4 weights (block absmax scale, the level set above)."""
    return fake_lut(x, BNB_FP4_VALUES, block)


# ---------------------------------------------------------------------------------------------
# FP8 E4M3 ("fn": bias 7, max 448, no infinities, one NaN pattern)

E4M3_MAX = 448.0
E4M3_MIN_NORMAL_EXP = -6
E4M3_MANTISSA_BITS = 3


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP8 E4M3 value, ties to even, saturating at +-448 (subnormals kept)."""
    xf = x.float()
    a = xf.abs()
    exp = torch.floor(torch.log2(a.clamp_min(2.0**-30))).clamp(min=E4M3_MIN_NORMAL_EXP)
    ulp = torch.exp2(exp - E4M3_MANTISSA_BITS)  # spacing of representable values near a
    q = torch.round(a / ulp) * ulp  # torch.round: half to even, and a / ulp is an exact float
    return torch.sign(xf) * q.clamp(max=E4M3_MAX)


def fake_fp8(x: torch.Tensor, granularity: str = "tensor") -> torch.Tensor:
    amax = absmax(x.float(), granularity)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (round_e4m3(x.float() / scale) * scale).to(x.dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(|ref|^2 / |approx - ref|^2), in dB."""
    sig = reference.double().pow(2).sum()
    noise = (approx.double() - reference.double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(sig / noise))
