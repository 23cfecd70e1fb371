"""GPTQ: known answers (uncorrelated inputs reduce it to round-to-nearest) and its defining property."""

import pytest
import torch
from torch.testing import assert_close

from qsink.quant import primitives as P
from qsink.quant.handling.gptq import gptq_quantize


@pytest.mark.parametrize("symmetric, group", [(True, None), (False, None), (True, 16), (False, 32)])
def test_identity_hessian_is_round_to_nearest(symmetric, group):
    torch.manual_seed(0)
    W = torch.randn(24, 64)
    Q = gptq_quantize(W, torch.eye(64), bits=4, symmetric=symmetric, group=group)
    rtn = P.fake_int(W, 4, symmetric, "group" if group else "row", group)
    assert_close(Q, rtn, rtol=0, atol=1e-6)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    torch.manual_seed(0)
    mix = torch.randn(64, 64) / 8 + torch.eye(64)
    X = torch.randn(2048, 64) @ mix  # correlated input features
    W = torch.randn(48, 64)
    H = 2 * X.T @ X
    ref = X @ W.T
    for group in (None, 16):
        Q = gptq_quantize(W, H, bits=3, symmetric=True, group=group)
        rtn = P.fake_int(W, 3, True, "group" if group else "row", group)
        err_gptq = (X @ Q.T - ref).pow(2).sum()
        err_rtn = (X @ rtn.T - ref).pow(2).sum()
        assert err_gptq < 0.8 * err_rtn
        # every quantized weight still lies on its row's (or group's) integer grid
        width = group or 64
        for start in range(0, 64, width):
            assert torch.unique(Q[0, start : start + width]).numel() <= 2**3


def test_dead_inputs_are_zeroed():
    W = torch.randn(4, 8)
    H = torch.eye(8)
    H[3, 3] = 0.0
    Q = gptq_quantize(W, H, bits=8)
    assert torch.all(Q[:, 3] == 0)
