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
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal, 6 = 1.5 * 2^2


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _amax_last(a: torch.Tensor) -> torch.Tensor:
    """``a.amax(dim=-1, keepdim=True)``. torch reduces rows of 16 several times slower than rows of
    32 on CPU, so a 16-wide block is first halved twice (a maximum is exact in any order)."""
    if a.shape[-1] == 16:
        a = torch.maximum(a[..., :8], a[..., 8:])
        a = torch.maximum(a[..., :4], a[..., 4:])
    return a.amax(dim=-1, keepdim=True)


# float32 bit patterns: the exponent field, one step of it, 1.0 and 4.0
_F32_EXP_FIELD = 0x7F800000
_F32_EXP_STEP = 0x00800000
_F32_ONE = 0x3F800000
_F32_FOUR = 0x40800000


def _exponent_bits(y: torch.Tensor, work: torch.Tensor | None) -> torch.Tensor:
    """The bits of ``y`` (float32) with only the exponent field kept: the power of two at or below
    ``|y|`` for a normal ``y``, as int32; written into ``work`` (a float32 tensor like ``y``) if given."""
    if work is None:
        return y.view(torch.int32) & _F32_EXP_FIELD
    return torch.bitwise_and(y.view(torch.int32), _F32_EXP_FIELD, out=work.view(torch.int32))


def _round_e2m1_(y: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`round_e2m1` in place on a float32 temporary that holds no -0.0 (see below); ``work``,
    a float32 temporary of ``y``'s shape, is overwritten (else one is allocated).

    The E2M1 magnitudes are the multiples of a step ``h`` = 0.5 on [0, 2), 1 on [2, 4) and 2 on
    [4, 6]; ``h`` is half the power of two at or below ``clamp(|y|, 1, 4)``, read from the exponent
    bits. ``y / h`` and ``* h`` are exact (powers of two, no overflow, and a ``y`` whose quotient
    would be subnormal rounds to zero anyway), so ``round(y / h) * h`` (half to even) is the nearest
    multiple of ``h`` with ties to the even multiple, i.e. the even code: 0.25 -> 0, 0.75 -> 1,
    1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4; clamping to +-6 first saturates (6 -> 6, and
    everything above 6 would round to 6 or 8). The sign is ``y``'s, so a negative ``y`` that rounds
    to zero gives -0.0 as ``sign(y) * 0`` does; ``sign(-0.0)`` is +0.0, which is why ``y`` must not
    hold -0.0 (callers add 0.0, turning -0.0 into +0.0 and changing nothing else)."""
    y.clamp_(-E2M1_MAX, E2M1_MAX)
    h = _exponent_bits(y, work).clamp_(_F32_ONE, _F32_FOUR).sub_(_F32_EXP_STEP).view(torch.float32)
    return y.div_(h).round_().mul_(h)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value (ties to the even code), saturating at +-6; float32 out."""
    return _round_e2m1_(_as_float32(x) + 0.0)  # + 0.0: a new tensor, and -0.0 -> +0.0 (sign(-0.0) = 0)


@torch.no_grad()  # in-place temporaries, so no autograd graph (the rounding has zero gradient)
def fake_mxfp4(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    xb, pad = _blocks(_as_float32(x), block)
    work = xb.abs()
    amax = _amax_last(work).clamp_min_(2.0**-127)
    # frexp: amax = m * 2^e with m in [0.5, 1), so floor(log2(amax)) = e - 1 exactly (float32 log2
    # rounds up to k for the few floats just below 2^k)
    exp = (torch.frexp(amax).exponent - (1 + E2M1_EMAX)).float()
    exp = torch.where(torch.isfinite(amax), exp, amax)  # an inf in the block: 2^127; a NaN: NaN (as log2)
    scale = torch.exp2(exp.clamp_(-127, 127))
    y = torch.div(xb, scale).add_(0.0)  # exact (a power of two); + 0.0: -0.0 -> +0.0 as sign() does
    return _unblocks(_round_e2m1_(y, work).mul_(scale), pad).to(x.dtype)


@torch.no_grad()  # in-place temporaries, so no autograd graph (the rounding has zero gradient)
def fake_nvfp4(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    xb, pad = _blocks(_as_float32(x), block)
    work = xb.abs()
    amax = _amax_last(work)
    tensor_amax = amax.amax()  # = |x|.max(): the padding zeros change no maximum
    g = tensor_amax / (E2M1_MAX * E4M3_MAX) if tensor_amax > 0 else torch.tensor(1.0, device=x.device)
    block_scale = round_e4m3(amax / (E2M1_MAX * g))  # FP8 E4M3 code
    scale = block_scale * g
    # a block whose scale is 0 quantizes to +0.0: divide it by inf (x / inf + 0.0 = +0.0, and its
    # output is +0.0 * 0 = +0.0, or NaN where the scale is NaN, as before)
    y = torch.div(xb, torch.where(scale > 0, scale, math.inf)).add_(0.0)  # -0.0 -> +0.0 as sign() does
    return _unblocks(_round_e2m1_(y, work).mul_(scale), pad).to(x.dtype)


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
# float32 bits of the spacings 2^-9 (below 2^-6: the subnormals) and 2^5 (on [256, 512)), and of 2^3
_E4M3_MIN_ULP = (127 + E4M3_MIN_NORMAL_EXP - E4M3_MANTISSA_BITS) * _F32_EXP_STEP
_E4M3_MAX_ULP = (127 + 8 - E4M3_MANTISSA_BITS) * _F32_EXP_STEP
_E4M3_MANTISSA_STEP = E4M3_MANTISSA_BITS * _F32_EXP_STEP


def _round_e4m3_(t: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`round_e4m3` in place on a float32 temporary with no -0.0 and no infinity; ``work`` as
    in :func:`_round_e2m1_`.

    The spacing of E4M3 values at ``|t|`` is ``2^(e - 3)``, ``e`` the exponent of ``|t|`` clamped to
    [-6, 8] (below 2^-6 the subnormals' 2^-9; from 2^8 up everything saturates anyway): the exponent
    bits of ``|t|``, minus 3, clamped. ``round(t / ulp) * ulp`` is exact as in :func:`_round_e2m1_`,
    then ``clamp`` saturates at +-448."""
    ulp = _exponent_bits(t, work).sub_(_E4M3_MANTISSA_STEP).clamp_(_E4M3_MIN_ULP, _E4M3_MAX_ULP)
    ulp = ulp.view(torch.float32)
    return t.div_(ulp).round_().mul_(ulp).clamp_(-E4M3_MAX, E4M3_MAX)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP8 E4M3 value, ties to even, saturating at +-448 (subnormals kept).

    An infinite input gives NaN (and -0.0 gives +0.0)."""
    xf = _as_float32(x)
    t = torch.sub(xf, xf).add_(xf)  # x - x + x: x, but +0.0 for -0.0 and NaN for +-inf
    return _round_e4m3_(t)


@torch.no_grad()  # in-place temporaries, so no autograd graph (the rounding has zero gradient)
def fake_fp8(x: torch.Tensor, granularity: str = "tensor") -> torch.Tensor:
    xf = _as_float32(x)
    work = xf.abs()
    if granularity == "tensor":
        amax = work.amax().reshape([1] * xf.dim())
    elif granularity == "row":
        amax = work.amax(dim=-1, keepdim=True)
    else:
        amax = absmax(xf, granularity)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    if not bool((scale > 0).all()):  # amax / 448 underflowed to 0: x / 0 is infinite, round_e4m3 -> NaN
        return (round_e4m3(xf / scale) * scale).to(x.dtype)
    t = torch.div(xf, scale).add_(0.0)  # finite; + 0.0: -0.0 -> +0.0 as sign() does
    return _round_e4m3_(t, work).mul_(scale).to(x.dtype)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(|ref|^2 / |approx - ref|^2), in dB."""
    sig = reference.double().pow(2).sum()
    noise = (approx.double() - reference.double()).pow(2).sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(sig / noise))
