"""Primitives against independent references: enumeration, table lookup, torch's float8, bitsandbytes."""

import itertools

import pytest
import torch
from torch.testing import assert_close

from qsink.quant import gguf_formats as G
from qsink.quant import primitives as P

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def e2m1_reference(x: float) -> float:
    """Nearest E2M1 value by exhaustive search; ties to the even code; saturating."""
    a = min(abs(x), 6.0)
    best = min(range(8), key=lambda i: (abs(E2M1[i] - a), i % 2))
    return (1 if x >= 0 else -1) * E2M1[best]


def test_e2m1_matches_table_lookup_including_ties():
    grid = torch.arange(-80, 81) / 8  # every multiple of 1/8 in [-10, 10]: all ties included
    got = P.round_e2m1(grid)
    expect = torch.tensor([e2m1_reference(float(v)) for v in grid])
    assert_close(got, expect, rtol=0, atol=0)
    assert float(P.round_e2m1(torch.tensor(1e9))) == 6.0


def int_reference(row, bits, symmetric):
    """Best grid point by enumeration of all codes, with the documented scale rule."""
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = max(abs(v) for v in row) / qmax or 1.0
        zero = 0
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = min(min(row), 0.0), max(max(row), 0.0)
        scale = (hi - lo) / qmax or 1.0
        zero = min(max(round(-lo / scale), qmin), qmax)
    grid = [(q - zero) * scale for q in range(qmin, qmax + 1)]
    return [min(grid, key=lambda g: (abs(g - v), g)) for v in row]


@pytest.mark.parametrize("bits, symmetric", itertools.product([2, 3, 4, 8], [True, False]))
def test_int_rows_match_enumeration(bits, symmetric):
    torch.manual_seed(bits)
    x = torch.randn(5, 37) * torch.tensor([0.01, 1, 10, 100, 1000])[:, None]
    got = P.fake_int(x, bits, symmetric, "row")
    for r in range(5):
        expect = torch.tensor(int_reference(x[r].tolist(), bits, symmetric))
        # enumeration and rounding agree except on exact ties, which random data never hits
        assert_close(got[r], expect, rtol=1e-6, atol=1e-6 * float(x[r].abs().max()))


def test_int_edge_cases():
    z = torch.zeros(3, 8)
    assert torch.equal(P.fake_int(z, 4), z)
    c = torch.full((2, 8), 3.5)
    assert_close(P.fake_int(c, 4), c)  # all-equal rows are exact (absmax is a grid point)
    assert_close(P.fake_int(c, 4, symmetric=False), c)
    huge = torch.tensor([[1e30, -1e30, 0.0]])
    assert_close(P.fake_int(huge, 8), huge)
    tiny = torch.tensor([[1e-30, -2e-30]])
    assert torch.isfinite(P.fake_int(tiny, 8)).all()
    x = torch.randn(4, 6)
    before = x.clone()
    P.fake_int(x, 4)
    assert torch.equal(x, before)  # inputs are never changed
    with pytest.raises(ValueError, match="2 to 8 bits"):
        P.fake_int(x, 9)


def test_groups_that_do_not_divide_are_padded():
    x = torch.randn(3, 70)
    got = P.fake_int(x, 4, True, "group", group=32)
    assert got.shape == x.shape
    # the last, shorter group (6 elements) has its own scale
    assert_close(got[:, 64:], P.fake_int(x[:, 64:], 4, True, "row"))
    assert_close(got[:, :32], P.fake_int(x[:, :32], 4, True, "row"))


def test_per_tensor_uses_one_scale():
    x = torch.tensor([[1.0, 2.0], [3.0, 127.0]])
    assert_close(P.fake_int(x, 8, granularity="tensor"), x)


def test_e4m3_matches_torch_float8():
    v = torch.cat([torch.linspace(-448, 448, 200001), torch.randn(100000) * 1e-2, torch.randn(1000) * 1e-4])
    assert_close(P.round_e4m3(v), v.to(torch.float8_e4m3fn).float(), rtol=0, atol=0)
    assert float(P.round_e4m3(torch.tensor(1e6))) == 448.0


def test_mxfp4_block_scale_is_a_power_of_two():
    x = torch.randn(2, 64) * 3
    y = P.fake_mxfp4(x)
    for b in range(2):
        blk = x[0, b * 32 : (b + 1) * 32]
        scale = 2.0 ** (torch.floor(torch.log2(blk.abs().max())) - 2)
        assert_close(y[0, b * 32 : (b + 1) * 32], torch.tensor([e2m1_reference(float(v)) for v in blk / scale]) * scale)


def test_nvfp4_against_a_direct_computation():
    x = torch.randn(3, 48) * 5
    g = x.abs().max() / (6 * 448)
    out = torch.empty_like(x)
    for r in range(3):
        for b in range(3):
            blk = x[r, b * 16 : (b + 1) * 16]
            s = (blk.abs().max() / (6 * g)).to(torch.float8_e4m3fn).float() * g
            out[r, b * 16 : (b + 1) * 16] = torch.tensor([e2m1_reference(float(v)) for v in blk / s]) * s
    assert_close(P.fake_nvfp4(x), out, rtol=1e-6, atol=1e-6)
    assert torch.equal(P.fake_nvfp4(torch.zeros(2, 16)), torch.zeros(2, 16))


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_lookup_formats_match_bitsandbytes(kind):
    F = pytest.importorskip("bitsandbytes.functional")
    x = torch.randn(16, 128)
    q, state = F.quantize_4bit(x, blocksize=64, quant_type=kind)
    ours = P.fake_nf4(x, 64) if kind == "nf4" else P.fake_fp4(x, 64)
    assert_close(ours, F.dequantize_4bit(q, state), rtol=0, atol=0)


def test_sqnr():
    x = torch.ones(100)
    assert P.sqnr_db(x, x + 0.1) == pytest.approx(20.0)
    assert P.sqnr_db(x, x) == float("inf")


# ---------------------------------------------------------------------------------------------
# the vectorised block formats against the implementations they replaced, bit for bit

_E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDS = (_E2M1_VALUES[1:] + _E2M1_VALUES[:-1]) / 2


def _reference_round_e2m1(x):
    a = x.float().abs()
    mids = _E2M1_MIDS.to(a.device)
    idx = torch.bucketize(a, mids)  # mids[i-1] < a <= mids[i] -> i
    tie = a == mids[idx.clamp(max=len(mids) - 1)]
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    return torch.sign(x.float()) * _E2M1_VALUES.to(a.device)[idx]


def _reference_fake_mxfp4(x, block=32, exponent="log2"):
    """The former implementation; ``exponent="bits"`` reads floor(log2(absmax)) from the float's
    exponent field (exact, the OCP MX rule) instead of the float32 log2, which can round up."""
    xb, pad = P._blocks(x.float(), block)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    if exponent == "log2":
        exp = torch.floor(torch.log2(amax.clamp_min(2.0**-127))) - 2
    else:  # biased exponent - 127 (a subnormal or zero amax reads -127: the clamp below makes it -127 anyway)
        exp = ((amax.view(torch.int32) >> 23) - 127 - 2).float()
    scale = torch.exp2(exp.clamp(-127, 127))
    return P._unblocks(_reference_round_e2m1(xb / scale) * scale, pad).to(x.dtype)


def _reference_round_e4m3(x):
    xf = x.float()
    a = xf.abs()
    exp = torch.floor(torch.log2(a.clamp_min(2.0**-30))).clamp(min=-6)
    ulp = torch.exp2(exp - 3)
    q = torch.round(a / ulp) * ulp
    return torch.sign(xf) * q.clamp(max=448.0)


def _reference_fake_nvfp4(x, block=16):
    xf = x.float()
    tensor_amax = xf.abs().amax()
    g = tensor_amax / (6.0 * 448.0) if tensor_amax > 0 else torch.tensor(1.0, device=x.device)
    xb, pad = P._blocks(xf, block)
    block_scale = _reference_round_e4m3(xb.abs().amax(dim=-1, keepdim=True) / (6.0 * g))
    scale = block_scale * g
    q = _reference_round_e2m1(torch.where(scale > 0, xb / scale, torch.zeros_like(xb)))
    return P._unblocks(q * scale, pad).to(x.dtype)


def _reference_fake_fp8(x, granularity="tensor"):
    amax = P.absmax(x.float(), granularity)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    return (_reference_round_e4m3(x.float() / scale) * scale).to(x.dtype)


def _reference_fake_q8_0(x):
    b = x.float().reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    d = b.abs().amax(dim=-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.trunc(b * inv + torch.where(b * inv >= 0, 0.5, -0.5))
    return (q * d.half().float()).reshape(x.shape).to(x.dtype)


def _reference_fake_q8_k(x):
    b = x.float().reshape(*x.shape[:-1], x.shape[-1] // 256, 256)
    idx = b.abs().argmax(dim=-1, keepdim=True)
    mx = b.gather(-1, idx)
    iscale = torch.where(mx != 0, -127.0 / mx, torch.zeros_like(mx))
    q = torch.round(iscale * b).clamp(max=127)
    d = torch.where(mx != 0, 1.0 / iscale, torch.zeros_like(mx))
    return (q * d).reshape(x.shape).to(x.dtype)


_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def assert_bits_equal(got, want):
    """Same dtype, shape and bits (-0.0 is not +0.0); NaNs only need to sit in the same places."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    if not nan.any():
        assert torch.equal(got, want)
    assert torch.equal(got[~nan].view(_BITS[got.dtype]), want[~nan].view(_BITS[want.dtype]))


def _float32_sweep():
    """Every exponent and sign, the top 11 mantissa bits exhaustively, the low 12 as 0, 1, half, all
    but one, all: every E2M1 / E4M3 tie, rounding boundary, subnormal and the largest floats."""
    top = torch.arange(1 << 11, dtype=torch.int32) << 12
    low = torch.tensor([0, 1, 0x7FF, 0x800, 0x801, 0xFFE, 0xFFF], dtype=torch.int32)
    mant = (top[:, None] | low[None, :]).reshape(-1)
    exps = torch.arange(255, dtype=torch.int32) << 23  # 255: inf / NaN left out
    bits = (exps[:, None] | mant[None, :]).reshape(-1)
    return torch.cat([bits, bits | torch.tensor(-(1 << 31), dtype=torch.int32)]).view(torch.float32)


def _ties():
    """k/4 and k/2 times powers of two: every E2M1 tie and grid point at every block scale."""
    k = torch.arange(-64, 65, dtype=torch.float32)
    e = torch.exp2(torch.arange(-12, 13, dtype=torch.float32))
    return torch.cat([(k[:, None] * 0.25 * e[None, :]).reshape(-1), (k[:, None] * 0.5 * e[None, :]).reshape(-1)])


def _activations():
    """(name, tensor): random at several scales, ties, zeros, tiny and huge values, shapes whose
    last dimension is no multiple of any block, 3-D activations."""
    g = torch.Generator().manual_seed(0)
    out = [(f"randn*{s:g}", torch.randn(3, 5, 512, generator=g) * s) for s in (1e-6, 1e-3, 1.0, 30.0, 1e4)]
    t = _ties()
    t = t[torch.randperm(t.numel(), generator=g)]
    out.append(("ties", t[: t.numel() // 512 * 512].reshape(-1, 512)))
    out.append(("ties-sorted", _ties()[:6400].reshape(-1, 256)))
    out += [("zeros", torch.zeros(4, 512)), ("-zeros", -torch.zeros(4, 512))]
    z = torch.randn(8, 512, generator=g)
    z[0] = 0.0
    z[1, :256] = -0.0
    z[1, 256:] = 0.0
    z[2, :32] = 0.0  # an all-zero block among others
    z[2, 40] = -0.0
    z[3, 5], z[3, 6], z[3, 7] = 1e-45, -1e-45, -1e-40  # subnormals beside normal values
    z[4, 0], z[4, 1], z[4, 2] = 3e38, -1e-40, -2e-38  # a huge value: its block's small ones underflow
    z[5, :16] = torch.randn(16, generator=g) * 1e-30  # a block tiny against the tensor (scale 0 in NVFP4)
    z[6] *= 1e-38
    z[7, ::3] = 0.0
    out.append(("edge", z))
    out += [(f"pad{n}", torch.randn(2, 3, n, generator=g) * 4) for n in (5, 17, 70, 100, 300)]
    out.append(("activation", torch.randn(2, 16, 768, generator=g) * torch.linspace(0.01, 20, 768)))
    return out


def _power_of_two_blocks(block):
    """Blocks whose absmax is exactly 2^k, and blocks whose absmax is the float just below 2^k."""
    g = torch.Generator().manual_seed(1)
    k = torch.arange(-30, 31, dtype=torch.float32)
    p = torch.exp2(k)
    below = torch.nextafter(p, torch.zeros(()))
    rows = []
    for peak in (p, below, -p, -below):
        x = torch.rand(len(k), 2 * block, generator=g) * 2 - 1
        x *= p[:, None] * 0.999
        x[:, 3] = peak
        x[:, block + 5] = -peak
        rows.append(x)
    return torch.cat(rows)


def _float_inputs(x):
    yield x
    yield x.bfloat16()


def test_round_e2m1_and_e4m3_bitwise_over_a_float32_sweep():
    v = _float32_sweep()
    assert_bits_equal(P.round_e2m1(v), _reference_round_e2m1(v))
    assert_bits_equal(P.round_e4m3(v), _reference_round_e4m3(v))
    t = _ties()
    for f, ref in ((P.round_e2m1, _reference_round_e2m1), (P.round_e4m3, _reference_round_e4m3)):
        assert_bits_equal(f(t), ref(t))
        assert_bits_equal(f(t.bfloat16()), ref(t.bfloat16()))
        special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-45, -1e-45])
        assert_bits_equal(f(special), ref(special))


@pytest.mark.parametrize("fn", ["mxfp4", "nvfp4", "fp8"])
def test_block_formats_bitwise_equal_to_the_former_implementation(fn):
    new = {"mxfp4": P.fake_mxfp4, "nvfp4": P.fake_nvfp4, "fp8": P.fake_fp8}[fn]
    ref = {"mxfp4": _reference_fake_mxfp4, "nvfp4": _reference_fake_nvfp4, "fp8": _reference_fake_fp8}[fn]
    for name, x in _activations():
        for xx in _float_inputs(x):
            before = xx.clone()
            assert_bits_equal(new(xx), ref(xx))
            assert torch.equal(xx, before)  # inputs are never changed
    x = torch.randn(4, 96)
    if fn == "fp8":
        assert_bits_equal(P.fake_fp8(x, "row"), _reference_fake_fp8(x, "row"))
    else:
        for block in (8, 32, 64, 200):
            assert_bits_equal(new(x, block), ref(x, block))
    for xx in _float_inputs(_power_of_two_blocks(16)):
        if fn == "mxfp4":
            assert_bits_equal(new(xx), _reference_fake_mxfp4(xx, exponent="bits"))
        else:
            assert_bits_equal(new(xx), ref(xx))


def test_mxfp4_scale_exponent_is_exact_just_below_a_power_of_two():
    """OCP MX: shared exponent floor(log2(absmax)) - 2. The former float32 log2 rounded up to k for
    the few floats just below 2^k (k >= 3 or k < -1): a scale twice too large for such a block."""
    x = _power_of_two_blocks(32)
    exact = _reference_fake_mxfp4(x, exponent="bits")
    assert_bits_equal(P.fake_mxfp4(x), exact)
    below = torch.nextafter(torch.tensor([[8.0]]), torch.tensor(0.0)).expand(1, 32)
    # absmax 8 - 2^-21: exponent 2, scale 2^0, so the block saturates at 6; the former log2 said 3 (scale 2)
    assert float(P.fake_mxfp4(below)[0, 0]) == 6.0
    assert float(_reference_fake_mxfp4(below)[0, 0]) == 8.0
    # where the two differ, the exact exponent is the only difference
    old = _reference_fake_mxfp4(x)
    differ = (old != exact).any(dim=-1)
    assert differ.any()
    amax = x.abs().amax(dim=-1)
    assert (amax[differ] == torch.nextafter(torch.exp2(torch.ceil(torch.log2(amax[differ].double()))).float(),
                                            torch.zeros(()))).all()


@pytest.mark.parametrize("fn", ["q8_0", "q8_k"])
def test_q8_activation_rounding_bitwise_equal_to_the_former_implementation(fn):
    new, ref = (G.fake_q8_0, _reference_fake_q8_0) if fn == "q8_0" else (G.fake_q8_k, _reference_fake_q8_k)
    cases = [(n, x) for n, x in _activations() if x.shape[-1] % 256 == 0]
    q = torch.zeros(2, 512)
    q[0, 0] = 127.0  # absmax 127: d = 1 (Q8_K: iscale = -1), the codes are +-x, so x = k + 1/2 are ties
    q[0, 1:255] = torch.arange(-127, 127)[:254] + 0.5
    q[0, 255] = 0.49999997
    q[1, :256] = torch.linspace(-3, 3, 256)
    q[1, 7] = -3.0  # two elements of largest magnitude, opposite signs: the first one's sign wins in llama.cpp
    q[1, 256:] = torch.randn(256) * 1e-37  # 127 / max overflows: Q8_K's literal path
    cases.append(("ties", q))
    for name, x in cases:
        for xx in _float_inputs(x):
            before = xx.clone()
            assert_bits_equal(new(xx), ref(xx))
            assert torch.equal(xx, before)


@pytest.mark.parametrize("fn", ["mxfp4", "nvfp4", "fp8"])
def test_block_formats_with_inf_or_nan_inputs_as_before(fn):
    """Not a use case, but the same: an inf saturates (MXFP4) or spreads NaN as it did, a NaN stays."""
    new = {"mxfp4": P.fake_mxfp4, "nvfp4": P.fake_nvfp4, "fp8": P.fake_fp8}[fn]
    ref = {"mxfp4": _reference_fake_mxfp4, "nvfp4": _reference_fake_nvfp4, "fp8": _reference_fake_fp8}[fn]
    for v in (float("inf"), -float("inf"), float("nan")):
        x = torch.randn(3, 70)
        x[1, 5] = v
        assert_bits_equal(new(x), ref(x))
    tiny = torch.full((2, 32), 1e-45)  # NVFP4: the tensor scale underflows to 0, so 0 / 0 -> NaN as before
    assert_bits_equal(new(tiny), ref(tiny))
