"""The K-quant encoders against gguf's decoder, against themselves, and against the real Gemma 3
270M Q4_K_M file (made by llama.cpp without an importance matrix).

Some shares here are below the 99 % one might expect, and they are llama.cpp's, not ours: while
writing the encoders, a C transcription of llama.cpp's encoders (compiled without FMA, outside this
suite) gave byte-identical output to ours on every case tried (random data, edge cases, imatrix,
the Gemma tensors). Re-encoding decoded values is not always a fixed point of llama.cpp's search:

* Q6_K picks a sub-block's sign from its largest |x|; on decoded values codes +31 and -31 can
  tie, the first one wins, and the block comes out with scale and codes both negated: other
  bytes, the same decoded values.
* Q3_K's super-block scale comes from the sub-block with the largest fitted scale; when that
  sub-block's decoded codes miss the extreme code -4, its refit is smaller and another sub-block
  sets the scale.
* Q5_K's candidate scales put 30.5 steps over a sub-block's range, so a sub-block whose codes
  span 0..30 lands on a rounding tie and may be stretched to 0..31.
"""

import time

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from qsink.quant.gguf_kquants import K_TYPES, QK_K, encode_k, fake_k

TYPE_SIZE = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}  # ggml-common.h

# Relative RMS error bounds on Gaussian data with two loud columns: about 1.25x what this seed
# gives. Each extra bit roughly halves the quantization step and so the error (checked below).
ERROR_BOUND = {"Q2_K": 0.33, "Q3_K": 0.19, "Q4_K": 0.11, "Q5_K": 0.055, "Q6_K": 0.034}


def loud_columns(rows=64, n=1024, seed=0) -> np.ndarray:
    """Standard normal weights with columns 3 and 500 twenty times louder."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[:, [3, 500]] *= 20
    return x


def rel_rms(a, b) -> float:
    return float(np.sqrt(((a - b) ** 2).sum() / (b**2).sum()))


def blocks(b: np.ndarray, qtype: str) -> np.ndarray:
    return b.reshape(-1, TYPE_SIZE[qtype])


@pytest.mark.parametrize("qtype", K_TYPES)
def test_encoding_is_what_gguf_decodes(qtype):
    x = loud_columns()
    b = encode_k(x, qtype)
    assert b.dtype == np.uint8 and b.shape == (64, 1024 // QK_K * TYPE_SIZE[qtype])
    assert gguf.constants.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]] == (QK_K, TYPE_SIZE[qtype])
    decoded = dequantize(b, gguf.GGMLQuantizationType[qtype])
    y = fake_k(x, qtype)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(decoded, y)
    assert rel_rms(y, x) < ERROR_BOUND[qtype]


def test_each_extra_bit_cuts_the_error():
    x = loud_columns()
    errors = [rel_rms(fake_k(x, t), x) for t in K_TYPES]  # Q2_K .. Q6_K
    print("relative RMS error:", dict(zip(K_TYPES, np.round(errors, 4))))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < 0.7 * coarse  # about half; at least 30 % less


@pytest.mark.parametrize("qtype", K_TYPES)
def test_zero_and_constant_super_blocks(qtype):
    x = np.zeros((2, 2 * QK_K), np.float32)
    x[1] = -0.25  # constant and negative: each sub-block's min is the value itself
    x[0, QK_K:] = 0.5  # constant and positive: the min is clamped to 0
    y = fake_k(x, qtype)
    assert np.array_equal(y[0, :QK_K], x[0, :QK_K])
    assert np.abs(y - x).max() <= 0.5 / 4  # within a quarter of the value, even at 2 bits
    if qtype == "Q6_K":
        assert not encode_k(x[:1, :QK_K], qtype).any()  # llama.cpp stores an all-zero block as zeros


# Share of super-blocks that re-encode to the same bytes / the same decoded values; measured at this
# seed on 1024 super-blocks: Q2_K 99.12 %, Q3_K 53.52 %, Q4_K 99.90 %, Q5_K 92.09 %, Q6_K 82.71 %
# of the bytes and 100 % of the values. llama.cpp's own search reaches 99 % only for Q2_K and Q4_K
# (bytes) and Q6_K (values); see the module docstring.
IDEMPOTENT_BYTES = {"Q2_K": 0.99, "Q3_K": 0.5, "Q4_K": 0.99, "Q5_K": 0.9, "Q6_K": 0.75}
IDEMPOTENT_VALUES = {"Q2_K": 0.99, "Q3_K": 0.5, "Q4_K": 0.99, "Q5_K": 0.9, "Q6_K": 0.99}


@pytest.mark.parametrize("qtype", K_TYPES)
def test_re_encoding_a_tensor_on_the_grid(qtype):
    x = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)
    b = encode_k(x, qtype)
    y = dequantize(b, gguf.GGMLQuantizationType[qtype])
    b2 = encode_k(y, qtype)
    y2 = dequantize(b2, gguf.GGMLQuantizationType[qtype])
    same_bytes = (blocks(b, qtype) == blocks(b2, qtype)).all(1).mean()
    same_values = (y.reshape(-1, QK_K) == y2.reshape(-1, QK_K)).all(1).mean()
    print(f"{qtype}: re-encoding keeps the bytes of {same_bytes:.2%} of super-blocks, the values of {same_values:.2%}")
    assert same_bytes >= IDEMPOTENT_BYTES[qtype]
    assert same_values >= IDEMPOTENT_VALUES[qtype]
    # where it moves, it moves little: re-quantizing grid values costs a fraction of quantizing
    assert rel_rms(y2, y) < 0.25 * rel_rms(y, x)


@pytest.fixture(scope="module")
def gemma_gguf(qsink_home):
    from qsink.models import BUILTINS

    model = BUILTINS.get("gemma3-270m")
    missing = model.missing()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: {model.install} (the Makefile does this)")
    return gguf.GGUFReader(model.assemble(log=lambda m: None))


@pytest.mark.slow
def test_reproduces_the_k_quant_blocks_of_a_real_file(gemma_gguf):
    """Dequantize every Q4_K and Q6_K tensor of the Gemma file, re-encode with the same type, compare
    super-block by super-block. The file says nothing of an imatrix, so no weights."""
    assert not [k for k in gemma_gguf.fields if "imatrix" in k]
    stats = {q: dict(blocks=0, bytes=0, values=0, worst=0.0) for q in ("Q4_K", "Q6_K")}
    seconds = 0.0
    for t in gemma_gguf.tensors:
        qtype = t.tensor_type.name
        if qtype not in stats:
            continue
        raw = np.asarray(t.data)
        y = dequantize(raw, t.tensor_type)
        start = time.perf_counter()
        b = encode_k(y, qtype)
        seconds += time.perf_counter() - start
        same = (blocks(b, qtype) == blocks(raw, qtype)).all(1)
        y2 = dequantize(b, t.tensor_type).reshape(-1, QK_K)
        y = y.reshape(-1, QK_K)
        block_err = np.sqrt(((y2 - y) ** 2).sum(1) / np.maximum((y**2).sum(1), 1e-30))
        s = stats[qtype]
        s["blocks"] += same.size
        s["bytes"] += int(same.sum())
        s["values"] += int((y2 == y).all(1).sum())
        s["worst"] = max(s["worst"], float(block_err.max()))
    gauss = np.random.default_rng(2).standard_normal((64, 1024)).astype(np.float32)
    for qtype, s in stats.items():
        print(f"{qtype}: {s['bytes']}/{s['blocks']} super-blocks byte-identical ({s['bytes'] / s['blocks']:.4%}), "
              f"decoded values identical {s['values'] / s['blocks']:.4%}, worst mismatching block "
              f"relative error {s['worst']:.4f}")
        # a block that differs is still a good encoding: its error on the file's values stays below
        # what quantizing Gaussian weights costs with this type
        assert s["worst"] < rel_rms(fake_k(gauss, qtype), gauss)
    print(f"encoded {sum(s['blocks'] for s in stats.values()) * QK_K / 1e6:.1f} M weights in {seconds:.1f} s")
    assert stats["Q4_K"]["bytes"] >= 0.99 * stats["Q4_K"]["blocks"]  # measured 99.92 %
    # Q6_K: llama.cpp itself re-encodes only 85.68 % of these blocks to the file's bytes (sign ties,
    # see the module docstring); the decoded values agree for 99.54 %
    assert stats["Q6_K"]["bytes"] >= 0.85 * stats["Q6_K"]["blocks"]
    assert stats["Q6_K"]["values"] >= 0.99 * stats["Q6_K"]["blocks"]


IMPORTANT = np.array([5, 40, 300, 301, 777, 1000])
# error on the important columns with / without the imatrix, measured at this seed: Q2_K 0.44,
# Q3_K 0.89 (3 symmetric levels a side leave one weight little room), Q4_K 0.14, Q5_K 0.23, Q6_K 0.56
IMATRIX_GAIN = {"Q2_K": 0.6, "Q3_K": 0.95, "Q4_K": 0.3, "Q5_K": 0.4, "Q6_K": 0.75}


@pytest.mark.parametrize("qtype", K_TYPES)
def test_importance_weights_protect_their_columns(qtype):
    x = loud_columns()
    weights = np.ones(1024, np.float32)
    weights[IMPORTANT] = 1000.0
    plain = np.sqrt(((fake_k(x, qtype) - x)[:, IMPORTANT] ** 2).mean())
    weighted = np.sqrt(((fake_k(x, qtype, weights) - x)[:, IMPORTANT] ** 2).mean())
    assert weighted < IMATRIX_GAIN[qtype] * plain


@pytest.mark.parametrize("qtype", K_TYPES)
def test_uniform_importance_gives_a_valid_encoding(qtype):
    x = loud_columns()
    b = encode_k(x, qtype, np.ones(1024, np.float32))
    y = dequantize(b, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(y, fake_k(x, qtype, np.ones(1024, np.float32)))
    assert rel_rms(y, x) < ERROR_BOUND[qtype]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="multiple of 256"):
        encode_k(np.zeros((2, 300), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="multiple of 256"):
        encode_k(np.zeros(512, np.float32), "Q4_K")
    with pytest.raises(ValueError, match="unknown K-quant type 'Q4_0'"):
        encode_k(np.zeros((2, 256), np.float32), "Q4_0")
    with pytest.raises(ValueError, match="unknown K-quant type"):
        fake_k(np.zeros((2, 256), np.float32), "Q7_K")
    with pytest.raises(ValueError, match=r"weights must have shape \(512,\)"):
        encode_k(np.zeros((2, 512), np.float32), "Q6_K", np.ones(256, np.float32))


# --- the legacy types with an importance matrix (llama.cpp's quantize_row_q{4,5}_{0,1}_impl) ----------------
# A scalar, element-by-element transcription of the C, in float32, written for this test only: the vectorised
# encoder must give the same bytes.

f32 = np.float32


def _ref_make_qx(x, nmax, w):  # make_qx_quants, rmse_type 1, with weights
    amax, mx = f32(0), f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f32(1e-15):
        return f32(0), [0] * len(x)

    def fit(iscale):
        L, slx, sl2 = [], f32(0), f32(0)
        for v, wi in zip(x, w):
            l = int(min(max(np.rint(f32(iscale * v)), -nmax), nmax - 1))
            L.append(l + nmax)
            slx = f32(slx + f32(f32(wi * v) * f32(l)))
            sl2 = f32(sl2 + f32(f32(wi * f32(l)) * f32(l)))
        return L, slx, sl2

    L, slx, sl2 = fit(f32(-nmax) / mx)
    scale = f32(slx / sl2) if sl2 else f32(0)
    best = f32(scale * slx)
    for s in range(-9, 10):
        if s == 0:
            continue
        L2, slx, sl2 = fit(f32(-(f32(nmax) + f32(f32(0.1) * f32(s)))) / mx)
        if sl2 > 0 and f32(slx * slx) > f32(best * sl2):
            L, scale = L2, f32(slx / sl2)
            best = f32(scale * slx)
    return scale, L


def _ref_make_qkx3(x, nmax, w):  # make_qkx3_quants(n, nmax, x, w, L, &the_min, Laux, -0.9, 0.05, 36, false)
    mn, mx = x[0], x[0]
    sum_w, sum_x = w[0], f32(w[0] * x[0])
    for v, wi in zip(x[1:], w[1:]):
        mn, mx = min(mn, v), max(mx, v)
        sum_w, sum_x = f32(sum_w + wi), f32(sum_x + f32(wi * v))
    mn = min(mn, f32(0))
    if mx <= mn:
        return f32(0), f32(-mn), [0] * len(x)
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(f32(1) / iscale)

    def codes(isc, m):
        return [int(min(max(np.rint(f32(isc * f32(v - m))), 0), nmax)) for v in x]

    def err(sc, m, L):
        e = f32(0)
        for v, wi, l in zip(x, w, L):
            d = f32(f32(f32(sc * f32(l)) + m) - v)
            e = f32(e + f32(wi * f32(d * d)))
        return e

    L = codes(iscale, mn)
    best = err(scale, mn, L)
    for s in range(37):
        isc = f32(f32(f32(f32(-0.9) + f32(f32(0.05) * f32(s))) + f32(nmax)) / f32(mx - mn))
        La = codes(isc, mn)
        sl, sl2, sxl = f32(0), f32(0), f32(0)
        for v, wi, l in zip(x, w, La):
            sl = f32(sl + f32(wi * f32(l)))
            sl2 = f32(sl2 + f32(f32(wi * f32(l)) * f32(l)))
            sxl = f32(sxl + f32(f32(wi * f32(l)) * v))
        D = f32(f32(sum_w * sl2) - f32(sl * sl))
        if D > 0:
            ts = f32(f32(f32(sum_w * sxl) - f32(sum_x * sl)) / D)
            tm = f32(f32(f32(sl2 * sum_x) - f32(sl * sxl)) / D)
            if tm > 0:
                tm, ts = f32(0), f32(sxl / sl2)
            e = err(ts, tm, La)
            if e < best:
                L, best, scale, mn = La, e, ts, tm
    return scale, f32(-mn), L


def _ref_legacy_row(x, qtype, qw):
    """One row as quantize_row_*_impl writes it."""
    s2 = f32(0)
    for v in x:
        s2 = f32(s2 + f32(v * v))
    sigma2 = f32(s2 / f32(len(x)))
    out = []
    for b in range(0, len(x), 32):
        xb = list(x[b : b + 32])
        w = [f32(q * np.sqrt(f32(sigma2 + f32(v * v)))) for q, v in zip(qw[b : b + 32], xb)]
        nmax = {"Q4_0": 8, "Q5_0": 16, "Q4_1": 15, "Q5_1": 31}[qtype]
        if qtype.endswith("_0"):
            d, L = _ref_make_qx(xb, nmax, w)
            head = np.array([d], np.float16).view(np.uint8)
        else:
            d, the_min, L = _ref_make_qkx3(xb, nmax, w)
            head = np.concatenate([np.array([d], np.float16).view(np.uint8), np.array([-the_min], np.float16).view(np.uint8)])
        qs = [(L[j] & 0xF) | ((L[j + 16] & 0xF) << 4) for j in range(16)]
        qh = sum(((L[j] >> 4) & 1) << j for j in range(32))
        five = np.array([qh], "<u4").view(np.uint8) if qtype.startswith("Q5") else np.zeros(0, np.uint8)
        out.append(np.concatenate([head, five, np.array(qs, np.uint8)]))
    return np.concatenate(out)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_types_with_an_imatrix_match_a_scalar_transcription(qtype):
    """Bytes equal to an element-by-element float32 transcription of llama.cpp's weighted legacy search, on
    rows with a loud column, an all-zero block, a constant block and an all-positive block; gguf decodes them."""
    from qsink.quant.gguf_kquants import encode_legacy_weighted

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[:, 3] *= 30
    x[1, 32:64] = 0
    x[1, 64:96] = 0.25
    x[2, :32] = np.abs(x[2, :32]) + 0.5
    qw = rng.uniform(0.01, 2, 128).astype(np.float32)
    qw[3] = 500
    got = encode_legacy_weighted(x, qtype, qw)
    want = np.stack([_ref_legacy_row(row, qtype, qw) for row in x])
    assert got.shape == want.shape == (3, 4 * GGML_SIZE[qtype])
    assert (got == want).all()
    y = dequantize(got, gguf.GGMLQuantizationType[qtype]).reshape(x.shape)
    assert (y[1, 32:64] == 0).all()
    plain = dequantize(gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype]), gguf.GGMLQuantizationType[qtype])
    plain = plain.reshape(x.shape)
    # the weighted search trades error: the heavily weighted column comes out closer than the reference's
    assert np.abs(y[:, 3] - x[:, 3]).sum() < np.abs(plain[:, 3] - x[:, 3]).sum()


GGML_SIZE = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}  # bytes per block of 32, ggml-common.h


def test_imatrix_reaches_legacy_types_through_the_scheme():
    """fake_weight with an imatrix on a Q5_0 row differs from the unweighted encoding and lowers the weighted error."""
    import torch

    from qsink.quant.gguf_formats import fake_weight

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 576, generator=g)
    im = torch.rand(576, generator=g) + 0.01
    im[100] = 1000.0
    a, b = fake_weight(w, "Q5_0"), fake_weight(w, "Q5_0", im)
    assert not torch.equal(a, b)
    assert ((b - w) ** 2 * im).sum() < ((a - w) ** 2 * im).sum()
    assert torch.equal(fake_weight(w, "Q8_0", im), fake_weight(w, "Q8_0"))  # Q8_0 has no search to weight
