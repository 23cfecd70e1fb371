"""llama.cpp's GGUF quantization types as qsink weight and activation formats, and llama.cpp's rule
for which type each tensor of a mixture (Q4_K_M, ...) gets.

Weights are stored row by row along the input dimension, as GGUF stores a linear's weight:

* legacy types, blocks of 32: Q8_0 (a scale), Q4_0 / Q5_0 (a scale, codes around 8 / 16), Q4_1 /
  Q5_1 (a scale and a minimum). Encoded and decoded by the maintained ``gguf`` package
  (``gguf.quants.quantize`` / ``dequantize``, llama.cpp's reference row quantizers); with an
  importance matrix, Q4_0 .. Q5_1 are encoded by qsink after llama.cpp's weighted search
  (:func:`qsink.quant.gguf_kquants.encode_legacy_weighted`), as ``llama-quantize --imatrix`` does.
* K-quants, super-blocks of 256 with quantized sub-block scales (and minimums): Q2_K, Q3_K, Q4_K,
  Q5_K, Q6_K. ``gguf`` decodes them but cannot encode them; :mod:`qsink.quant.gguf_kquants` is
  qsink's encoder after llama.cpp's reference search (``ggml-quants.c``), optionally weighted by an
  importance matrix; ``gguf`` decodes.

A row whose length is not a multiple of a type's block cannot use it: llama.cpp then falls back to
another type (``llama_tensor_get_type`` in ``src/llama-quant.cpp``: Q2_K / Q3_K -> IQ4_NL,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 if that does not fit either). qsink does the
same (IQ4_NL, which qsink cannot encode, is replaced by Q4_0 and the record says so) and records
every fallback; it never pads.

Activations as llama.cpp's CPU backend computes a matmul: the input of each matmul is quantized on
the fly to the weight type's ``vec_dot_type``: Q8_0 blocks of 32 for Q4_0 / Q5_0 / Q8_0 (and Q8_1,
the same codes plus a block sum, for Q4_1 / Q5_1; qsink models Q8_1 as Q8_0: the fp16 rounding of
Q8_1's block sum is not modelled), Q8_K blocks of 256 for the K-quants. Q8_0: ``d = amax / 127``,
codes ``round(x / d)`` (half away from zero), scale stored as fp16 (``quantize_row_q8_0_ref``).
Q8_K: ``iscale = -127 / max`` with ``max`` the signed value of largest magnitude, codes
``min(127, nearest_int(iscale * x))`` (half to even), ``d = 1 / iscale`` in fp32
(``quantize_row_q8_K_ref``).
"""

from __future__ import annotations

import numpy as np
import torch

LEGACY = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
TYPES = LEGACY + K_QUANTS
BLOCK = {**{t: 32 for t in LEGACY}, **{t: 256 for t in K_QUANTS}}
# what llama.cpp uses instead when a row does not split into the type's blocks
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
FALLBACK_NOTE = {"Q2_K": "llama.cpp falls back to IQ4_NL, which qsink cannot encode; Q4_0 instead",
                 "Q3_K": "llama.cpp falls back to IQ4_NL, which qsink cannot encode; Q4_0 instead"}
ACT_TYPE = {"Q8_0": "Q8_0", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q4_1": "Q8_0", "Q5_1": "Q8_0",
            **{t: "Q8_K" for t in K_QUANTS}}  # the vec_dot_type llama.cpp's CPU backend rounds inputs to
BITS = {"Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q2_K": 2.625, "Q3_K": 3.4375,
        "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}  # bits per weight, scales included


def fits(qtype: str, n: int) -> bool:
    return n % BLOCK[qtype] == 0


def usable_type(qtype: str, n: int) -> tuple[str, str | None]:
    """The type a row of ``n`` weights actually gets, and why it differs from ``qtype`` (None if not)."""
    if fits(qtype, n):
        return qtype, None
    fb = FALLBACK.get(qtype)
    if fb is None or not fits(fb, n):
        return "F16", f"rows of {n} fit neither {qtype} nor its fallback; kept in fp16 as llama.cpp does"
    why = f"rows of {n} are not a multiple of {BLOCK[qtype]}: {qtype} -> {fb} as llama.cpp does"
    return fb, why + (f" ({FALLBACK_NOTE[qtype]})" if qtype in FALLBACK_NOTE else "")


def _gguf_type(qtype: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[qtype]


def encode(w: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """GGUF bytes of a float32 (rows, n) weight, one row of blocks per weight row."""
    if qtype not in TYPES:
        raise ValueError(f"unknown GGUF type {qtype!r}; known: {', '.join(TYPES)}")
    if not fits(qtype, w.shape[-1]):
        raise ValueError(f"{qtype} needs rows that are a multiple of {BLOCK[qtype]}, not {w.shape[-1]}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype in K_QUANTS:
        from qsink.quant.gguf_kquants import encode_k

        return encode_k(w, qtype, imatrix)
    from qsink.quant.gguf_kquants import LEGACY_WEIGHTED, encode_legacy_weighted

    if imatrix is not None and qtype in LEGACY_WEIGHTED:
        return encode_legacy_weighted(w, qtype, imatrix)  # llama.cpp's quantize_row_*_impl
    from gguf.quants import quantize

    return quantize(w, _gguf_type(qtype))  # llama.cpp's reference quantizer (Q8_0 ignores an imatrix there too)


def decode(data: np.ndarray, qtype: str) -> np.ndarray:
    from gguf.quants import dequantize

    return dequantize(data, _gguf_type(qtype))


@torch.no_grad()
def fake_weight(w: torch.Tensor, qtype: str, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """``decode(encode(w))``: the weight as llama.cpp would hold it, in ``w``'s dtype and device."""
    if qtype == "F16":
        return w.to(torch.float16).to(w.dtype)
    im = None if imatrix is None else imatrix.detach().float().cpu().numpy()
    out = decode(encode(w.detach().float().cpu().numpy(), qtype, im), qtype)
    return torch.from_numpy(out.reshape(w.shape)).to(device=w.device, dtype=w.dtype)


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] % size:
        raise ValueError(f"activation rows of {x.shape[-1]} do not split into blocks of {size}")
    return x.float().reshape(*x.shape[:-1], x.shape[-1] // size, size)


@torch.no_grad()  # in-place temporaries, so no autograd graph (the rounding has zero gradient)
def fake_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Q8_0 activation rounding (blocks of 32, fp16 scale), as ``quantize_row_q8_0_ref``.

    Codes are ``trunc(v + 0.5)`` for ``v >= 0`` (-0.0 included) and ``trunc(v - 0.5)`` below, with
    ``v = x * (1 / d)``: roundf's half away from zero (but for v = +-0.49999997, where ``v + 0.5``
    rounds up to 1). ``v + 0.5 * sign(v)`` is that sum exactly (sign(+-0.0) = +0.0, so a zero gives
    +0.0 as ``-0.0 + 0.5`` truncated does)."""
    b = _blocks(x, 32)
    v = b.abs()
    d = v.amax(dim=-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    v = torch.mul(b, inv, out=v)  # the |x| buffer reused
    q = v.add_(torch.sign(v), alpha=0.5).trunc_()
    return q.mul_(d.half().float()).reshape(x.shape).to(x.dtype)


@torch.no_grad()  # in-place temporaries, so no autograd graph (the rounding has zero gradient)
def fake_q8_k(x: torch.Tensor) -> torch.Tensor:
    """Q8_K activation rounding (blocks of 256, fp32 scale), as ``quantize_row_q8_K_ref``.

    llama.cpp takes ``max``, the first element of largest magnitude, with its sign. Its sign does not
    change the result while ``-127 / max`` is finite: negating ``max`` negates ``iscale``, the codes
    (half-to-even rounding is symmetric, and ``|iscale * x| <= 127 (1 + 2^-24)^2`` rounds to at most
    127, so the clamp never acts) and ``d``, and ``(-q) * (-d) = q * d`` bit for bit. So ``max`` is
    taken as ``+absmax``; a block so small that ``127 / absmax`` overflows (below ~3.7e-37) goes the
    literal way, where the sign matters (infinite codes)."""
    b = _blocks(x, 256)
    q = b.abs()
    amax = q.amax(dim=-1, keepdim=True)
    nonzero = amax != 0
    iscale = torch.where(nonzero, -127.0 / amax, torch.zeros_like(amax))
    if not bool(torch.isfinite(iscale).all()):
        idx = q.argmax(dim=-1, keepdim=True)  # the first element of largest magnitude, as the C loop's '>'
        mx = b.gather(-1, idx)
        iscale = torch.where(mx != 0, -127.0 / mx, torch.zeros_like(mx))
        q = torch.round(iscale * b).clamp(max=127)  # torch.round: half to even, like nearest_int
        d = torch.where(mx != 0, 1.0 / iscale, torch.zeros_like(mx))
        return (q * d).reshape(x.shape).to(x.dtype)
    d = torch.where(nonzero, 1.0 / iscale, torch.zeros_like(amax))
    q = torch.mul(b, iscale, out=q).round_()  # torch.round: half to even, like nearest_int
    return q.mul_(d).reshape(x.shape).to(x.dtype)


def fake_activation(x: torch.Tensor, act_type: str) -> torch.Tensor:
    if act_type == "Q8_0":
        return fake_q8_0(x)
    if act_type == "Q8_K":
        return fake_q8_k(x)
    raise ValueError(f"unknown activation type {act_type!r}; use Q8_0 or Q8_K")


# ----------------------------------------------------------------------------- llama.cpp's mixtures

# llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*) and their default type
FTYPES = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
          "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
          "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}


def role_of(name: str) -> str:
    """llama.cpp's tensor role of a block linear named as qsink's adapters name it."""
    leaf = name.split("[")[0].rsplit(".", 1)[-1]
    parent = name.split("[")[0].rsplit(".", 2)[-2] if name.count(".") else ""
    roles = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "out_proj": "attn_output", "dense": "attn_output", "qkv_proj": "attn_qkv", "c_attn": "attn_qkv",
             "query_key_value": "attn_qkv", "gate_proj": "ffn_gate", "up_proj": "ffn_up", "gate_up_proj": "ffn_up",
             "c_fc": "ffn_up", "fc1": "ffn_up", "dense_h_to_4h": "ffn_up", "down_proj": "ffn_down",
             "fc2": "ffn_down", "dense_4h_to_h": "ffn_down"}
    if leaf == "c_proj":  # GPT-2: attn.c_proj writes attention's output, mlp.c_proj is the FFN's down projection
        return "attn_output" if parent == "attn" else "ffn_down"
    if leaf in ("lm_head", "output"):
        return "output"
    return roles.get(leaf, leaf)


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def mixture_type(ftype: str, role: str, layer: int, n_layers: int, n_gqa: int = 1, has_imatrix: bool = False) -> str:
    """The type llama.cpp's ``llama_tensor_get_type`` gives a dense model's tensor (before the fallback
    for row lengths): the file type's default, raised for attn_v, ffn_down, attn_output and attn_qkv by
    its per-layer rules, and Q6_K for the output head (Q8_0 stays Q8_0)."""
    t = FTYPES[ftype]
    if role == "output":
        return "Q8_0" if t == "Q8_0" else "Q6_K"
    i, n = layer, n_layers
    if role == "attn_v":
        if ftype == "Q2_K":
            return "Q4_K" if n_gqa >= 4 else "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < 2 else "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
            return "Q6_K"
        if ftype == "Q4_K_S" and i < 4:
            return "Q5_K"
        return t
    if role == "ffn_down":
        if ftype == "Q2_K":
            return "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
            return "Q6_K"
        if ftype == "Q4_K_S" and i < n // 8:
            return "Q5_K"
        if ftype in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            return "Q4_1" if ftype == "Q4_0" else "Q5_1"
        return t
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, t)
    if role == "attn_qkv":
        return {"Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(ftype, t)
    return t


def tensor_type(ftype: str, role: str, layer: int, n_layers: int, n_in: int, n_gqa: int = 1,
                has_imatrix: bool = False) -> tuple[str, str | None]:
    """:func:`mixture_type`, then the fallback for rows of ``n_in``; (type, why it fell back or None)."""
    return usable_type(mixture_type(ftype, role, layer, n_layers, n_gqa, has_imatrix), n_in)
