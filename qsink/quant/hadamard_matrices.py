"""Hadamard matrices of the sizes transformer widths take, and fast application.

A Hadamard matrix of order n (entries +-1, ``H H^T = n I``) exists for n = 1, 2 and multiples of 4.
We build ``H_m (x) H_{2^k}`` (Kronecker product) with a Sylvester ``H_{2^k}`` and a Paley ``H_m``:

* Paley I, q prime with q = 3 (mod 4): order q + 1 (12, 20, 24, 32, 44, 48, ...);
* Paley II, q prime with q = 1 (mod 4): order 2(q + 1) (12, 28, 36, 60, ...).

So 576 = 36 x 16 (SmolLM2's width) and 1536 = 12 x 128 (its FFN width) both work. Applying
``x @ (A (x) B)`` costs a reshape and two small matmuls, ``A^T X B`` with ``X = x.view(m, 2^k)``,
instead of one n x n matmul. Rotations are normalised (``H / sqrt(n)``) and randomised by a
seeded diagonal of signs, as in QuaRot (Ashkboos et al. 2024, arXiv 2404.00456).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from qsink.errors import QsinkError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(math.isqrt(q)) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    squares = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if i in squares else -1 for i in range(1, q)]
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)


def sylvester(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m by Paley's constructions, or None if neither applies."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        Q = _jacobsthal(q)
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = Q
        return S + torch.eye(m, dtype=torch.float64)
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:
            Q = _jacobsthal(q)
            C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            C[0, 1:] = 1
            C[1:, 0] = 1
            C[1:, 1:] = Q
            a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            return torch.kron(C, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


@lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A (x) B`` a Hadamard matrix of order n, B a Sylvester power of two."""
    k = (n & -n).bit_length() - 1  # largest power of two dividing n
    for kk in range(k, -1, -1):
        m = n >> kk
        if m == 1:
            return torch.ones(1, 1, dtype=torch.float64), sylvester(1 << kk)
        A = paley(m)
        if A is not None:
            return A, sylvester(1 << kk)
    raise QsinkError(f"no Hadamard matrix of order {n} can be built here (needs n = m * 2^k with a Paley order m); "
                     "use another outlier-handling method for this model")


def hadamard(n: int) -> torch.Tensor:
    """The full (unnormalised) Hadamard matrix of order n, float64."""
    A, B = hadamard_factors(n)
    return torch.kron(A, B)


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """Orthogonal ``diag(s) H / sqrt(n)`` with seeded random signs s, float64."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return signs[:, None] * hadamard(n) / math.sqrt(n)


def apply_hadamard(x: torch.Tensor) -> torch.Tensor:
    """``x @ H / sqrt(n)`` over the last dimension without forming H."""
    n = x.shape[-1]
    A, B = hadamard_factors(n)
    A, B = A.to(x.device, x.dtype), B.to(x.device, x.dtype)
    X = x.reshape(*x.shape[:-1], A.shape[0], B.shape[0])
    return (A.T @ X @ B).reshape(x.shape) / math.sqrt(n)
