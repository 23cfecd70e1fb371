"""Hadamard constructions: every order up to 256 that the module claims (n = m * 2^k, m = 1 or a
Paley order) is built as an exact +-1 matrix with H H^T = n I, every other order is refused with a
clear error, and the fast application equals the dense product."""

import math

import pytest
import torch

from qsink.errors import QsinkError
from qsink.quant.hadamard_matrices import apply_hadamard, hadamard, hadamard_factors, paley, random_hadamard, sylvester

# Written out (not computed by the module): Paley I orders q + 1 for primes q = 3 (mod 4), and
# Paley II orders 2(q + 1) for primes q = 1 (mod 4), up to 256.
PALEY_I = [4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, 80, 84, 104, 108, 128, 132, 140, 152, 164, 168, 180, 192, 200, 212,
           224, 228, 240, 252]
PALEY_II = [12, 28, 36, 60, 76, 84, 108, 124, 148, 180, 196, 204, 220, 228]
# n <= 256 of the form m * 2^k with m = 1 or a Paley order
SUPPORTED = [1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 60, 64, 68, 72, 76, 80, 84, 88, 96, 104, 108, 112, 120,
             124, 128, 132, 136, 140, 144, 148, 152, 160, 164, 168, 176, 180, 192, 196, 200, 204, 208, 212, 216, 220, 224,
             228, 240, 248, 252, 256]
# multiples of 4 up to 256 that no Paley factor reaches (Hadamard matrices of these orders exist, but
# not by the constructions the module implements)
UNREACHED = [52, 92, 100, 116, 156, 172, 184, 188, 232, 236, 244]


def assert_hadamard(H: torch.Tensor, n: int) -> None:
    assert H.shape == (n, n) and H.dtype == torch.float64
    assert bool(((H == 1) | (H == -1)).all())
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))  # exact: integer arithmetic in float64


def test_the_written_out_lists_are_consistent():
    """A typo in the lists above would otherwise decide what the tests below expect."""
    paley_orders = set(PALEY_I) | set(PALEY_II)
    reach = {m << k for m in paley_orders | {1} for k in range(9) if m << k <= 256}
    assert sorted(reach) == SUPPORTED
    assert sorted(SUPPORTED + UNREACHED) == [1, 2] + list(range(4, 257, 4))


@pytest.mark.parametrize("n", SUPPORTED)
def test_every_claimed_order_is_an_exact_hadamard_matrix(n):
    assert_hadamard(hadamard(n), n)
    A, B = hadamard_factors(n)
    assert A.shape[0] * B.shape[0] == n
    assert B.shape[0] & (B.shape[0] - 1) == 0  # B is the Sylvester power of two
    assert torch.equal(B, sylvester(B.shape[0]))


@pytest.mark.parametrize("m", sorted(set(PALEY_I + PALEY_II)))
def test_paley_orders(m):
    H = paley(m)
    assert H is not None
    assert_hadamard(H, m)


@pytest.mark.parametrize("m", [2, 3, 5, 6, 10, 16, 40, 52, 92, 100])
def test_paley_declines_other_orders(m):
    assert paley(m) is None


@pytest.mark.parametrize("k", range(9))
def test_sylvester(k):
    assert_hadamard(sylvester(2**k), 2**k)


@pytest.mark.parametrize("n", [n for n in range(1, 257) if n not in SUPPORTED])
def test_every_other_order_is_refused_clearly(n):
    with pytest.raises(QsinkError, match=rf"no Hadamard matrix of order {n} can be built here .*another outlier-handling method"):
        hadamard_factors(n)


def test_unsupported_sizes_include_the_impossible_ones():
    for n in (3, 5, 6, 7, 10, 14, 18, 30, 50, 98, 250):  # not 1, 2 or a multiple of 4: no Hadamard matrix exists
        with pytest.raises(QsinkError, match=f"order {n} "):
            hadamard(n)


@pytest.mark.parametrize("n", [12, 20, 28, 48, 80, 96, 576, 1536])
def test_fast_application_is_the_normalised_dense_product(n):
    torch.manual_seed(0)
    x = torch.randn(3, 2, n, dtype=torch.float64)
    H = hadamard(n)
    assert_hadamard(H, n)
    assert torch.allclose(apply_hadamard(x), x @ H / math.sqrt(n), atol=1e-10)
    assert torch.allclose(apply_hadamard(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-12)  # orthogonal


@pytest.mark.parametrize("n", [12, 48, 64])
def test_random_hadamard_is_orthogonal_and_seeded(n):
    Q = random_hadamard(n, seed=3)
    assert torch.allclose(Q @ Q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(Q, random_hadamard(n, seed=3))
    assert not torch.equal(Q, random_hadamard(n, seed=4))
    assert torch.equal((Q * math.sqrt(n)).abs().round(), torch.ones(n, n, dtype=torch.float64))
    # the signs are a diagonal: Q = diag(s) H / sqrt(n), each row of H flipped or not
    rowsign = (Q * math.sqrt(n) / hadamard(n))
    assert torch.allclose(rowsign, rowsign[:, :1].expand(n, n))
