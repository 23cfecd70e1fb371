"""Primitives against independent references: enumeration, table lookup, torch's float8, bitsandbytes."""

import itertools

import pytest
import torch
from torch.testing import assert_close

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
