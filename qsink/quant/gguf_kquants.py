"""Encoders for llama.cpp's K-quant types (Q2_K .. Q6_K), computing what llama.cpp's reference code does.

The ``gguf`` package decodes every GGML type but cannot encode the K-quants; this module does,
after the reference C code in llama.cpp's ``ggml/src/ggml-quants.c`` (read at ggml-org/llama.cpp
01243c58): ``quantize_row_q{2,3,4,5,6}_K_ref`` (no importance matrix) and ``quantize_q{2,3,4,5,6}_K``
/ ``quantize_row_q{2,3,4,5,6}_K_impl`` (with ``quant_weights``), with the helpers ``nearest_int``,
``make_qkx2_quants``, ``make_qkx3_quants``, ``make_qx_quants``, ``make_q3_quants``,
``make_qp_quants`` and the scale layout read back by ``get_scale_min_k4``. Block layouts are those
of ``ggml/src/ggml-common.h``. The arithmetic is float32 in C's order of operations: sums over a
sub-block are sequential (numpy's own sums are pairwise), ``nearest_int`` (the ``+ 12582912``
trick) is round half to even, as ``np.rint`` on float32, and fp16 conversion rounds to nearest
even, as ``np.float16``. A compiler that fuses ``a * b + c`` into one FMA (GCC with
``-march=native``, clang on arm64) rounds differently and can pick another candidate in a
near-tie: such builds of llama.cpp differ from this on some super-blocks (on random data about
7 % for Q2_K, up to 2 % for the others; none of the Gemma 3 270M Q4_K_M tensors). Re-encoding
decoded values is not always a fixed point of llama.cpp's search (ties in the sign of a Q3_K or
Q6_K sub-block, candidate scales that miss a Q5_K sub-block's code range); this module keeps
those outcomes too. Weights so large that a super-block scale overflows fp16 (|x| above about
4e6) give infinite scales, as in llama.cpp, whose codes are then undefined behaviour in C.

Every type works on super-blocks of 256 weights (``QK_K``):

* Q2_K (84 bytes, 2.625 bits/weight): 16 sub-blocks of 16, codes 0..3, each sub-block with a
  4-bit scale and a 4-bit min, times the fp16 super-block ``d`` and ``dmin``:
  ``x = d * sc * q - dmin * m``.
* Q3_K (110 bytes, 3.4375 b/w): 16 sub-blocks of 16, codes -4..3 (low 2 bits in ``qs``, the high
  bit in ``hmask``), signed 6-bit scales (stored + 32) times fp16 ``d``: ``x = d * sc * q``.
* Q4_K (144 bytes, 4.5 b/w): 8 sub-blocks of 32, codes 0..15, 6-bit scales and 6-bit mins packed
  in 12 bytes, fp16 ``d`` and ``dmin``: ``x = d * sc * q - dmin * m``.
* Q5_K (176 bytes, 5.5 b/w): as Q4_K with codes 0..31 (the fifth bit in ``qh``).
* Q6_K (210 bytes, 6.5625 b/w): 16 sub-blocks of 16, codes -32..31 (4 bits in ``ql``, 2 in
  ``qh``), int8 scales times fp16 ``d``: ``x = d * sc * q``.

Without an importance matrix each sub-block's scale (and min) is fitted by a search over
candidate scales with weighted least squares (Q2/Q4/Q5: ``make_qkx2_quants``; Q3:
``make_q3_quants``; Q6: ``make_qx_quants``); the super-block scale maps the largest sub-block
scale (and min) to the top code of the sub-block scales (15 for Q2_K, 63 for Q4_K/Q5_K, -32 for
Q3_K, -128 for Q6_K), and the codes are re-rounded with the stored scales. With an importance
matrix ``qw`` (per input column, llama.cpp's ``imatrix``: mean of the squared activations) the
per-weight error weights become ``qw * sqrt(sigma2 + x^2)`` (Q2_K: ``sigma2 = sum(x^2)/256`` over
the super-block; Q3_K, Q4_K, Q5_K: ``2 * sum(x^2)/256``; Q6_K: ``qw`` alone), the sub-block fit is
``make_qkx3_quants`` (a finer candidate grid; Q3_K, Q6_K: ``make_qx_quants``) under them, and the
sub-block scales and mins are themselves quantized by a search weighted by each sub-block's total
weight (Q2_K, Q4_K, Q5_K: ``make_qp_quants``; Q3_K: ``make_qx_quants``) instead of relative to
their maximum (Q6_K keeps the maximum).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
_CHUNK = 8192  # super-blocks per pass: bounds the memory of the vectorised search

F = np.float32
Array = np.ndarray

# Layout: the element index of a sub-block comes first, (n, super-blocks, sub-blocks), so a
# sub-block's values are the rows x[0], x[1], ... and per-sub-block quantities of shape
# (super-blocks, sub-blocks) broadcast against x directly.


def _seqsum(a: Array) -> Array:
    """Sum over axis 0 in C's sequential order, in float32 (numpy's own sum is pairwise)."""
    s = a[0].copy()
    for row in a[1:]:
        s += row
    return s


def _fp16(v: Array) -> tuple[Array, Array]:
    """GGML_FP32_TO_FP16 and back: (the stored uint16 bits, the float32 value the decoder sees)."""
    h = np.asarray(v, F).astype(np.float16)
    return h.view(np.uint16), h.astype(F)


def _absmax(x: Array) -> tuple[Array, Array]:
    """(max |x|, the signed x where it first occurs) over axis 0, as the C loops with a strict ``>``."""
    mx = np.take_along_axis(x, np.argmax(np.abs(x), axis=0)[None], 0)[0]
    return np.abs(mx), mx


def _make_qkx(x: Array, w: Array, nmax: int, rmin: float, rdelta: float, nstep: int,
              use_mad: bool) -> tuple[Array, Array, Array]:
    """make_qkx2_quants / make_qkx3_quants (the same for given weights): codes 0..nmax with an
    affine fit ``x ~ scale * L + min`` (min <= 0), the best of nstep + 1 candidate scales.
    Returns (scale, -min, L)."""
    xmin = x.min(0)
    xmin = np.where(xmin > 0, F(0), xmin)
    xmax = x.max(0)
    flat = xmax == xmin  # constant sub-block (C returns early): codes 0, scale 0
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)

    def codes(iscale: Array, mn: Array) -> Array:
        return np.clip(np.rint(iscale * (x - mn)), 0, nmax)

    def error(scale: Array, mn: Array, L: Array) -> Array:
        diff = scale * L + mn - x
        return _seqsum(w * (np.abs(diff) if use_mad else diff * diff))

    iscale = F(nmax) / (xmax - xmin)
    scale = F(1) / iscale
    best = error(scale, xmin, codes(iscale, xmin))
    l_iscale, l_min = iscale, xmin  # the codes kept are codes(l_iscale, l_min)
    for step in range(nstep + 1):
        # the search starts from the best min so far: C updates ``min`` inside this loop
        iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / (xmax - xmin)
        La = codes(iscale, xmin)
        wl = w * La
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * La), _seqsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        clamp = this_min > 0
        this_min = np.where(clamp, F(0), this_min)
        this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, La)
        take = (D > 0) & (cur < best)
        l_iscale, l_min = np.where(take, iscale, l_iscale), np.where(take, xmin, l_min)
        best = np.where(take, cur, best)
        scale = np.where(take, this_scale, scale)
        xmin = np.where(take, this_min, xmin)
    return np.where(flat, F(0), scale), -xmin, np.where(flat, F(0), codes(l_iscale, l_min))


def _make_qx(x: Array, nmax: int, w: Array | None) -> tuple[Array, Array]:
    """make_qx_quants with rmse_type 1: symmetric codes -nmax..nmax-1 (returned + nmax), weights
    ``w`` or x^2, the best of 19 candidate scales refined by least squares. Returns (scale, L)."""
    amax, mx = _absmax(x)
    if w is None:
        w = x * x
    wx = w * x

    def codes(iscale: Array) -> Array:
        return np.clip(np.rint(iscale * x), -nmax, nmax - 1)

    def sums(iscale: Array) -> tuple[Array, Array]:
        l = codes(iscale)
        return _seqsum(wx * l), _seqsum(w * l * l)

    iscale = F(-nmax) / mx
    sumlx, suml2 = sums(iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F(0))
    best = scale * sumlx
    l_iscale = iscale
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(step)) / mx
        sumlx, suml2 = sums(iscale)
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l_iscale = np.where(take, iscale, l_iscale)
        scale = np.where(take, sumlx / suml2, scale)
        best = np.where(take, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F(0), scale), np.where(zero, F(0), codes(l_iscale) + nmax)


def _improve(x: Array, w: Array, L: Array, lo: float, hi: int, slx_only: bool) -> tuple[Array, Array]:
    """The five passes of one-code-at-a-time least-squares improvement of make_q3_quants
    (``slx_only``) and make_qp_quants, on codes ``L`` (changed in place) clamped to [lo, hi].
    C stops after a pass that changes nothing; such a pass leaves everything as it was, so running
    all five gives the same result. Returns (sum w x L, sum w L^2)."""
    wx = w * x
    sumlx, suml2 = _seqsum(wx * L), _seqsum(w * L * L)
    for _ in range(5):
        for i in range(x.shape[0]):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new = np.clip(np.rint(x[i] * sl2 / slx), lo, hi)
            slx_new = slx + wx[i] * new
            sl2_new = sl2 + w[i] * new * new
            ok = (slx > 0) & (sl2_new > 0) if slx_only else (slx > 0) & (sl2 > 0)
            take = ok & (new != li) & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            L[i] = np.where(take, new, li)
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
    return sumlx, suml2


def _make_q3(x: Array, nmax: int) -> tuple[Array, Array]:
    """make_q3_quants with do_rmse: codes -nmax..nmax-1 (returned + nmax), weights x^2, least-squares
    code improvement. Returns (scale, L)."""
    amax, mx = _absmax(x)
    L = np.clip(np.rint(F(-nmax) / mx * x), -nmax, nmax - 1)
    sumlx, suml2 = _improve(x, x * x, L, -nmax, nmax - 1, True)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero | ~(suml2 > 0), F(0), sumlx / suml2), np.where(zero, F(0), L + nmax)


def _make_qp(x: Array, nmax: int, w: Array) -> tuple[Array, Array]:
    """make_qp_quants: codes 0..nmax for the non-negative sub-block scales or mins, the best of 9
    candidate scales by weighted error, then least-squares code improvement. Returns (scale, L)."""
    mx = np.maximum(x.max(0), F(0))

    def mse(iscale: Array, l: Array) -> Array:
        diff = x - F(1) / iscale * l
        return _seqsum(w * diff * diff)

    iscale = F(nmax) / mx
    best = mse(iscale, np.rint(iscale * x))  # the first candidate's codes are not clamped
    for step in range(-4, 5):
        if step == 0:
            continue
        isc = (F(0.1) * F(step) + F(nmax)) / mx
        err = mse(isc, np.minimum(np.rint(isc * x), nmax))
        take = err < best
        best = np.where(take, err, best)
        iscale = np.where(take, isc, iscale)
    L = np.minimum(np.rint(iscale * x), nmax)
    sumlx, suml2 = _improve(x, w, L, -np.inf, nmax, False)
    zero = mx < GROUP_MAX_EPS
    return np.where(zero | ~(suml2 > 0), F(0), sumlx / suml2), np.where(zero, F(0), L)


def _requant(x: Array, d: Array, dm: Array, L: Array, nmax: int) -> Array:
    """Re-round the codes with the stored sub-block scale ``d`` and min ``dm``; sub-blocks with
    ``d == 0`` keep the codes of the fit (the C ``if (!d) continue``)."""
    return np.where(d != 0, np.clip(np.rint((x + dm) / d), 0, nmax), L)


def _requant_sym(x: Array, d: Array, L: Array, nmax: int) -> Array:
    """Symmetric re-rounding to -nmax..nmax-1, stored + nmax; as _requant for ``d == 0``."""
    return np.where(d != 0, np.clip(np.rint(x / d), -nmax, nmax - 1) + nmax, L)


def _split(blocks: Array, n: int) -> Array:
    """(super-blocks, 256) -> (n, super-blocks, 256 // n): sub-block elements first."""
    return np.ascontiguousarray(blocks.reshape(blocks.shape[0], -1, n).transpose(2, 0, 1))


def _codes(L: Array) -> Array:
    """(n, super-blocks, sub-blocks) codes -> (super-blocks, 256) uint8 in element order."""
    return L.astype(np.uint8).transpose(1, 2, 0).reshape(L.shape[1], QK_K)


def _sigma2_weights(x: Array, qw: Array, factor: int) -> Array:
    """The imatrix weights ``qw * sqrt(sigma2 + x^2)``, sigma2 = factor * sum(x^2) / 256 over the
    super-block (summed in element order)."""
    x2 = x * x
    sigma2 = F(factor) * _seqsum(np.moveaxis(x2, 2, 0).reshape(-1, x.shape[1])) / F(QK_K)
    return qw * np.sqrt(sigma2[:, None] + x2)


def _pack_crumbs(L: Array) -> Array:
    """Q2_K/Q3_K ``qs``: 2-bit codes, byte ``32*h + l`` holds elements ``128*h + 32*c + l``
    (c = 0..3) at bits 2c."""
    q = L.reshape(-1, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[:, None]
    return np.bitwise_or.reduce(q, axis=2).reshape(-1, 64)


def _pack_k4_scales(ls: Array, lm: Array) -> Array:
    """The 12 bytes of 6-bit scales and mins of Q4_K/Q5_K (read back by get_scale_min_k4)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    return np.concatenate([ls[:, :4] | (ls[:, 4:] >> 4) << 6, lm[:, :4] | (lm[:, 4:] >> 4) << 6,
                           (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4], axis=1)


def _half_bytes(bits: Array) -> Array:
    return bits.view(np.uint8).reshape(-1, 2)


def _encode_q2_k(blocks: Array, qw: Array | None) -> Array:
    x = _split(blocks, 16)
    if qw is None:  # quantize_row_q2_K_ref
        scales, mins, L = _make_qkx(x, np.abs(x), 3, -0.5, 0.1, 15, True)
        max_scale = np.maximum(scales.max(1), F(0))
        max_min = np.maximum(mins.max(1), F(0))
        ls = np.where(max_scale[:, None] > 0, np.rint(F(15) / max_scale[:, None] * scales), 0).astype(np.int64)
        lm = np.where(max_min[:, None] > 0, np.rint(F(15) / max_min[:, None] * mins), 0).astype(np.int64)
        sc = (ls & 0xFF) | ((lm << 4) & 0xFF)  # stored in a uint8
        d_bits, d = _fp16(np.where(max_scale > 0, max_scale / F(15), F(0)))
        m_bits, dmin = _fp16(np.where(max_min > 0, max_min / F(15), F(0)))
    else:  # quantize_row_q2_K_impl
        w = _sigma2_weights(x, _split(qw, 16), 1)
        scales, mins, L = _make_qkx(x, w, 3, -0.9, 0.05, 36, False)
        sw = _seqsum(w).T
        dm, ls = _make_qp(scales.T, 15, sw)
        mm, lm = _make_qp(mins.T, 15, sw)
        sc = ls.T.astype(np.int64) | lm.T.astype(np.int64) << 4
        d_bits, d = _fp16(dm)
        m_bits, dmin = _fp16(mm)
    L = _codes(_requant(x, d[:, None] * (sc & 0xF).astype(F), dmin[:, None] * (sc >> 4).astype(F), L, 3))
    return np.concatenate([sc.astype(np.uint8), _pack_crumbs(L), _half_bytes(d_bits), _half_bytes(m_bits)], axis=1)


def _encode_q3_k(blocks: Array, qw: Array | None) -> Array:
    x = _split(blocks, 16)
    if qw is None:  # quantize_row_q3_K_ref
        scales, L = _make_q3(x, 4)
        _, max_scale = _absmax(scales.T)
        iscale = F(-32) / max_scale[:, None]
        ls = np.where(max_scale[:, None] != 0, np.clip(np.rint(iscale * scales), -32, 31) + 32, 0).astype(np.int64)
        d_bits, d = _fp16(np.where(max_scale != 0, F(1) / iscale[:, 0], F(0)))
    else:  # quantize_row_q3_K_impl
        w = _sigma2_weights(x, _split(qw, 16), 2)
        scales, L = _make_qx(x, 4, w)
        d_block, ls = _make_qx(scales.T, 32, _seqsum(w).T)
        ls = ls.T.astype(np.int64)
        d_bits, d = _fp16(d_block)
    L = _codes(_requant_sym(x, d[:, None] * (ls - 32).astype(F), L, 4))
    hmask = np.bitwise_or.reduce((L > 3).astype(np.uint8).reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[:, None],
                                 axis=1)
    high = np.bitwise_or.reduce((ls.reshape(-1, 4, 4) >> 4) << (2 * np.arange(4))[:, None], axis=1)
    sc = np.concatenate([(ls[:, :8] & 0xF) | (ls[:, 8:] & 0xF) << 4, high], axis=1).astype(np.uint8)
    return np.concatenate([hmask, _pack_crumbs(L & 3), sc, _half_bytes(d_bits)], axis=1)


def _encode_q45_k(blocks: Array, qw: Array | None, nmax: int) -> Array:
    x = _split(blocks, 32)
    if qw is None:  # quantize_row_q4_K_ref / quantize_row_q5_K_ref
        av_x = np.sqrt(_seqsum(x * x) / F(32))
        rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
        scales, mins, L = _make_qkx(x, av_x + np.abs(x), nmax, rmin, 0.1, nstep, False)
        max_scale = np.maximum(scales.max(1), F(0))
        max_min = np.maximum(mins.max(1), F(0))
        inv_scale = np.where(max_scale > 0, F(63) / max_scale, F(0))[:, None]
        inv_min = np.where(max_min > 0, F(63) / max_min, F(0))[:, None]
        # stored through a uint8, then capped at 63
        ls = np.minimum(np.rint(inv_scale * scales).astype(np.int64) & 0xFF, 63)
        lm = np.minimum(np.rint(inv_min * mins).astype(np.int64) & 0xFF, 63)
        (d_bits, d), (m_bits, dmin) = _fp16(max_scale / F(63)), _fp16(max_min / F(63))
    else:  # quantize_row_q4_K_impl / quantize_row_q5_K_impl
        w = _sigma2_weights(x, _split(qw, 32), 2)
        scales, mins, L = _make_qkx(x, w, nmax, -0.9, 0.05, 36, False)
        sw = _seqsum(w).T
        d_block, ls = _make_qp(scales.T, 63, sw)
        m_block, lm = _make_qp(mins.T, 63, sw)
        ls, lm = ls.T, lm.T
        (d_bits, d), (m_bits, dmin) = _fp16(d_block), _fp16(m_block)
    L = _codes(_requant(x, d[:, None] * ls.astype(F), dmin[:, None] * lm.astype(F), L, nmax)).reshape(-1, 4, 2, 32)
    head = [_half_bytes(d_bits), _half_bytes(m_bits), _pack_k4_scales(ls, lm)]
    if nmax == 15:
        return np.concatenate([*head, (L[:, :, 0] | L[:, :, 1] << 4).reshape(-1, 128)], axis=1)
    lo, hi = L & 0xF, L >> 4
    qh = np.bitwise_or.reduce((hi << np.arange(8, dtype=np.uint8).reshape(4, 2, 1)).reshape(-1, 8, 32), axis=1)
    return np.concatenate([*head, qh, (lo[:, :, 0] | lo[:, :, 1] << 4).reshape(-1, 128)], axis=1)


def _encode_q6_k(blocks: Array, qw: Array | None) -> Array:
    x = _split(blocks, 16)
    # quantize_row_q6_K_ref, or quantize_row_q6_K_impl: there the imatrix weights the fit directly
    scales, L = _make_qx(x, 32, None if qw is None else _split(qw, 16))
    max_abs, max_scale = _absmax(scales.T)
    iscale = F(-128) / max_scale
    sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)
    d_bits, d = _fp16(F(1) / iscale)
    L = _codes(_requant_sym(x, d[:, None] * sc.astype(F), L, 32)).reshape(-1, 2, 4, 32)
    lo = L & 0xF
    ql = np.concatenate([lo[:, :, 0] | lo[:, :, 2] << 4, lo[:, :, 1] | lo[:, :, 3] << 4], axis=2).reshape(-1, 128)
    qh = np.bitwise_or.reduce((L >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None], axis=2).reshape(-1, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _half_bytes(d_bits)], axis=1)
    out[max_abs < GROUP_MAX_EPS] = 0  # a super-block without scale is stored as zeros
    return out


_ENCODERS = {
    "Q2_K": _encode_q2_k,
    "Q3_K": _encode_q3_k,
    "Q4_K": lambda x, qw: _encode_q45_k(x, qw, 15),
    "Q5_K": lambda x, qw: _encode_q45_k(x, qw, 31),
    "Q6_K": _encode_q6_k,
}


def _checked(x, weights, qtype: str, block: int) -> tuple[Array, Array | None]:
    """``x`` as float32 (rows, n) with n a multiple of ``block``, and ``weights`` (None, or one per column)."""
    x = np.asarray(x, dtype=F)
    if x.ndim != 2 or x.shape[1] % block:
        raise ValueError(f"{qtype} needs a 2-D array whose rows are a multiple of {block} long; got shape {x.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=F)
        if weights.shape != (x.shape[1],):
            raise ValueError(f"weights must have shape ({x.shape[1]},) (one per column); got {weights.shape}")
    return x, weights


def encode_k(x: np.ndarray, qtype: str, weights: np.ndarray | None = None) -> np.ndarray:
    """x: float32 (rows, n) with n % 256 == 0. Returns uint8 (rows, n // 256 * type_size) laid out
    exactly as GGUF stores the type, so ``gguf.quants.dequantize(result, GGMLQuantizationType[qtype])``
    decodes it. ``weights``: optional importance per input column, shape (n,) (llama.cpp's imatrix:
    mean of x^2 of the linear's input over calibration text); None = llama.cpp without an imatrix."""
    if qtype not in K_TYPES:
        raise ValueError(f"unknown K-quant type {qtype!r}; expected one of {', '.join(K_TYPES)}")
    x, weights = _checked(x, weights, qtype, QK_K)
    rows, n = x.shape
    if weights is not None:
        weights = weights.reshape(-1, QK_K)  # super-block i of any row uses weights[i % (n // 256)]
    blocks = x.reshape(-1, QK_K)
    type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):  # all-zero and constant blocks divide by zero; C masks them as we do
        for s in range(0, len(blocks), _CHUNK):
            e = min(s + _CHUNK, len(blocks))
            qw = None if weights is None else weights[np.arange(s, e) % len(weights)]
            out[s:e] = _ENCODERS[qtype](blocks[s:e], qw)
    return out.reshape(rows, n // QK_K * type_size)


LEGACY_WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")  # llama.cpp's Q8_0 ignores an importance matrix
QK = 32


def encode_legacy_weighted(x: np.ndarray, qtype: str, weights: np.ndarray) -> np.ndarray:
    """llama.cpp's legacy types with an importance matrix (``quantize_row_q{4,5}_{0,1}_impl``): per
    block of 32, error weights ``qw * sqrt(sigma2 + x^2)`` with ``sigma2 = sum(x^2) / n`` over the
    whole row; Q4_0 / Q5_0 fitted by ``make_qx_quants`` (codes -8..7 / -16..15 with the least-squares
    scale of the best of 19 candidates), Q4_1 / Q5_1 by ``make_qkx3_quants`` (codes 0..15 / 0..31 with
    a fitted scale and min <= 0). The codes are those of the fit (not re-rounded to the fp16 scale), as
    in llama.cpp. Without weights llama.cpp uses the reference quantizers (``gguf.quants.quantize``).
    x: float32 (rows, n), n % 32 == 0; weights: (n,). Returns the GGUF bytes (rows, n // 32 * size)."""
    if qtype not in LEGACY_WEIGHTED:
        raise ValueError(f"no weighted encoder for {qtype!r}; expected one of {', '.join(LEGACY_WEIGHTED)}")
    if weights is None:
        raise ValueError(f"{qtype} with an importance matrix needs its weights; without them use gguf.quants.quantize")
    x, weights = _checked(x, weights, qtype, QK)
    rows, n = x.shape
    nb = n // QK
    type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    out = np.empty((rows, nb, type_size), dtype=np.uint8)
    per_chunk = max(1, _CHUNK * QK_K // n)
    with np.errstate(all="ignore"):
        for r0 in range(0, rows, per_chunk):
            xr = x[r0 : r0 + per_chunk]
            sigma2 = _seqsum(np.ascontiguousarray((xr * xr).T)) / F(n)  # per row, summed in element order
            xb = xr.reshape(-1, QK).T  # (32, blocks): element index first
            qw = np.tile(weights.reshape(nb, QK), (len(xr), 1)).T
            w = qw * np.sqrt(np.repeat(sigma2, nb)[None] + xb * xb)
            out[r0 : r0 + per_chunk] = _LEGACY_PACK[qtype](xb, w).reshape(len(xr), nb, type_size)
    return out.reshape(rows, nb * type_size)


def _pack_nibbles(L: Array) -> Array:
    """(32, blocks) codes -> (blocks, 16) bytes: byte j holds element j (low) and j + 16 (high)."""
    L = L.astype(np.uint8)
    return ((L[:16] & 0xF) | (L[16:] & 0xF) << 4).T


def _pack_qh(L: Array) -> Array:
    """The fifth bits of (32, blocks) codes as Q5_0 / Q5_1's little-endian uint32 ``qh``: bit j is element j."""
    bits = (L.astype(np.uint32) >> 4) & 1
    qh = np.bitwise_or.reduce(bits << np.arange(32, dtype=np.uint32)[:, None], axis=0)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _legacy_sym(x: Array, w: Array, nmax: int, five: bool) -> Array:
    d, L = _make_qx(x, nmax, w)
    head = [_half_bytes(_fp16(d)[0])]
    return np.concatenate([*head, *([_pack_qh(L)] if five else []), _pack_nibbles(L)], axis=1)


def _legacy_affine(x: Array, w: Array, nmax: int, five: bool) -> Array:
    d, the_min, L = _make_qkx(x, w, nmax, -0.9, 0.05, 36, False)
    head = [_half_bytes(_fp16(d)[0]), _half_bytes(_fp16(-the_min)[0])]
    return np.concatenate([*head, *([_pack_qh(L)] if five else []), _pack_nibbles(L)], axis=1)


_LEGACY_PACK = {
    "Q4_0": lambda x, w: _legacy_sym(x, w, 8, False),
    "Q5_0": lambda x, w: _legacy_sym(x, w, 16, True),
    "Q4_1": lambda x, w: _legacy_affine(x, w, 15, False),
    "Q5_1": lambda x, w: _legacy_affine(x, w, 31, True),
}


def fake_k(x: np.ndarray, qtype: str, weights: np.ndarray | None = None) -> np.ndarray:
    """``dequantize(encode_k(x))`` as float32, same shape as x (decoded by ``gguf.quants.dequantize``)."""
    y = dequantize(encode_k(x, qtype, weights), GGMLQuantizationType[qtype])
    return y.astype(F, copy=False).reshape(np.shape(x))
