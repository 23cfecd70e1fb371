"""The statistics against direct, loop-by-loop computations on small tensors."""

import numpy as np
import pytest
import torch

from qsink.measure import stats


def test_kurtosis_matches_numpy():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 64) * torch.rand(3, 5, 1) * 4
    h[1, 2, 7] = 50.0  # one outlier channel
    k = stats.token_kurtosis(h)
    x = h.double().numpy()
    expect = ((x - x.mean(-1, keepdims=True)) ** 4).mean(-1) / x.var(-1) ** 2
    np.testing.assert_allclose(k.numpy(), expect, rtol=1e-4)
    assert k[1, 2] > 30 and abs(float(k[0, 0]) - 3) < 1.5  # a Gaussian token is near 3


def test_kurtosis_of_a_single_spike_has_a_closed_form():
    n = 100
    x = torch.zeros(n)
    x[3] = 7.0
    # one nonzero among n values: m4 / m2^2 = ((n-1)^3 + 1) / (n (n-1)) = (n^2 - 3n + 3) / (n - 1)
    assert float(stats.token_kurtosis(x)) == pytest.approx((n * n - 3 * n + 3) / (n - 1), rel=1e-5)


def _random_causal_weights(B, H, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, T, T, generator=g)
    logits = logits.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return logits.softmax(-1)


def test_sink_alpha_against_loops():
    w = _random_causal_weights(2, 3, 9)
    a = stats.sink_alpha(w)
    for b in range(2):
        for h in range(3):
            expect = sum(float(w[b, h, i, 0]) for i in range(1, 9)) / 8
            assert float(a[b, h]) == pytest.approx(expect, rel=1e-6)


def test_key_mass_against_loops():
    w = _random_causal_weights(1, 2, 7, seed=1)
    m = stats.key_mass(w)
    T = 7
    for h in range(2):
        for k in range(T):
            later = [float(w[0, h, i, k]) for i in range(k + 1, T)]
            expect = sum(later) / len(later) if later else 0.0
            assert float(m[0, h, k]) == pytest.approx(expect, rel=1e-6, abs=1e-9)


def test_massive_mask_needs_both_thresholds():
    a = torch.tensor([[50.0, 150.0, 150.0]])
    assert stats.massive_mask(a, median=0.1, abs_threshold=100, ratio_threshold=1000).tolist() == [[False, True, True]]
    assert not stats.massive_mask(a, median=1.0, abs_threshold=100, ratio_threshold=1000).any()


def test_topk_abs_coordinates():
    a = torch.zeros(4, 5)
    a[2, 3], a[0, 1] = 9.0, 5.0
    vals, coords = stats.topk_abs(a, 2)
    assert vals.tolist() == [9.0, 5.0] and coords.tolist() == [[2, 3], [0, 1]]
