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
