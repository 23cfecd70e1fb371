"""Cayley SGD keeps its matrices orthogonal and finds a known optimum on the Stiefel manifold."""

import math

import pytest
import torch

from qsink.quant.cayley import CayleySGD, cosine_lr, orthogonality_error


def _random_orthogonal(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))[None, :]


@pytest.mark.parametrize("n, seed", [(8, 0), (16, 1), (12, 2)])
def test_rotating_a_planted_outlier_spreads_it_to_the_known_optimum(n, seed):
    """One activation with all its energy in channel 0 (a massive activation): among rotations, max |x R| is
    smallest, a / sqrt(n), when R spreads it evenly over the channels; minimising sum((x R / a)^4) (whose minimum
    1/n is reached exactly there) with Cayley SGD gets there, and R stays orthogonal after every step."""
    a = 1000.0
    x = torch.zeros(1, n, dtype=torch.float64)
    x[0, 0] = a
    R = torch.nn.Parameter(_random_orthogonal(n, seed))
    opt = CayleySGD([R], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        loss = ((x @ R) / a).pow(4).sum()
        loss.backward()
        opt.step()
        assert orthogonality_error(R.detach()) < 1e-10
    y = (x @ R).detach().abs()
    assert float(loss.detach()) == pytest.approx(1 / n, rel=1e-3)
    assert float(y.max()) < 1.01 * a / math.sqrt(n) and float(y.min()) > 0.99 * a / math.sqrt(n)


def test_a_step_follows_the_descent_direction_and_its_size_is_bounded_by_the_step_norm():
    """For a linear loss <C, R> the first step decreases it; with a huge learning rate the step size is capped at
    2q / ||W|| (q = 1/2), so R moves by a bounded amount and stays orthogonal."""
    n = 6
    C = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    R = torch.nn.Parameter(torch.eye(n, dtype=torch.float64))
    opt = CayleySGD([R], lr=1e6)
    before = float((C * R.detach()).sum())
    (C * R).sum().backward()
    opt.step()
    after = float((C * R.detach()).sum())
    assert after < before
    W = 0.5 * ((-C) - (-C).T)  # at X = I: M = -G = -C, W_hat = M / 2, W = W_hat - W_hat^T
    alpha = 1 / float(torch.linalg.matrix_norm(W))
    cayley = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - alpha / 2 * W,
                                torch.eye(n, dtype=torch.float64) + alpha / 2 * W)
    assert torch.allclose(R.detach(), cayley, atol=1e-10)  # the exact Cayley transform with the capped step
    assert orthogonality_error(R.detach()) < 1e-12


def test_the_cosine_schedule_runs_from_the_base_rate_to_zero():
    assert cosine_lr(1.5, 0, 100) == 1.5 and cosine_lr(1.5, 50, 100) == pytest.approx(0.75)
    assert cosine_lr(1.5, 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        CayleySGD([torch.nn.Parameter(torch.eye(2))], lr=0)
