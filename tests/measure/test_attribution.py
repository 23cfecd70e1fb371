"""Step-up attribution and the FFN quadratic form, on constructed models with known answers."""

import math

import pytest
import torch

from qsink.measure.attribution import attribute_channels, ffn_quadratic_analysis, quadratic_form, spectrum_summary
from tests.conftest import MARKER_CH, SPIKE_CH, V, planted_spike_model


def test_planted_spike_is_attributed_to_the_blocks_that_inject_and_remove_it(tok, windows):
    model = planted_spike_model(tok, inject_block=2, cancel_block=4)
    (res,) = attribute_channels(model, windows.input_ids[:1], [SPIKE_CH], position=0)
    assert res["injector"]["block"] == 2 and res["injector"]["sublayer"] == "ffn"
    assert res["injector"]["delta_abs"] == pytest.approx(V, rel=1e-3)
    assert res["remover"]["block"] == 4 and res["remover"]["sublayer"] == "ffn"
    assert res["remover"]["delta_abs"] == pytest.approx(-V, rel=1e-3)
    others = [s for s in res["steps"] if (s["block"], s["sublayer"]) not in {(2, "ffn"), (4, "ffn")}]
    assert all(abs(s["delta"]) < 1e-3 for s in others)  # identity blocks change nothing
    (later,) = attribute_channels(model, windows.input_ids[:1], [SPIKE_CH], position=5)
    assert abs(later["injector"]["delta_abs"]) < 1e-3  # no spike on an ordinary token


def test_quadratic_form_of_known_spectrum():
    torch.manual_seed(0)
    D = 6
    Q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))
    d = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    target = torch.tensor([5.0, -3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    down = torch.zeros(3, D, dtype=torch.float64)
    down[1] = target / d
    gate = Q.T  # rows g_j = columns of Q
    up = d[:, None] * Q.T
    S = quadratic_form(gate, up, down, 1)  # = Q diag(target) Q^T
    assert torch.allclose(S, Q @ torch.diag(target) @ Q.T, atol=1e-10)
    out = spectrum_summary(S, x=Q[:, 0])
    assert out["lambda_1"] == pytest.approx(5.0) and out["lambda_2"] == pytest.approx(-3.0)
    assert out["ratio"] == pytest.approx(5 / 3)
    assert out["cos_input_leading"] == pytest.approx(1.0)
    assert spectrum_summary(S, x=Q[:, 1])["cos_input_leading"] == pytest.approx(0.0, abs=1e-10)


def test_quadratic_form_of_the_planted_injector(tok, windows):
    model = planted_spike_model(tok, inject_block=2, cancel_block=4)
    res = ffn_quadratic_analysis(model, windows.input_ids[:1], block_index=2, channel=SPIKE_CH, position=0, n_typical=4)
    mlp = model.model.layers[2].mlp
    with torch.no_grad():
        lam = float(mlp.gate_proj.weight[0, MARKER_CH] * mlp.up_proj.weight[0, MARKER_CH] * mlp.down_proj.weight[SPIKE_CH, 0])
    assert res["spike_channel"]["lambda_1"] == pytest.approx(lam, rel=1e-6)  # rank one: s * D[k, 0] on e_m
    assert math.isinf(res["spike_channel"]["ratio"])
    x = model.model.layers[2].post_attention_layernorm(model.model.embed_tokens.weight[tok.bos_token_id]).detach()
    assert res["spike_channel"]["cos_input_leading"] == pytest.approx(float(x[MARKER_CH].abs() / x.norm()), rel=1e-4)
    assert res["typical_channels"]["n"] == 4 and res["typical_channels"]["median_abs_lambda_1"] == 0.0
    assert "silu(z) ~ c z" in res["approximation"]  # the tiny Llama's gate activation, named
