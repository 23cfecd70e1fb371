"""Gradient sinks: an exact cross-check of the per-position gradients, the sink known answer, and
that the parameters are left untouched."""

import pytest
import torch

from qsink.measure.gradients import gradient_norms, gradient_sink_ratio, gradient_sinks
from tests.conftest import tiny_llama
from tests.measure.conftest import sink_model


def test_gradients_match_an_independent_autograd_computation(tok, windows):
    model = tiny_llama(tok, layers=2)
    x = windows.input_ids[:2]
    norms = gradient_norms(model, x)
    # independently: grad of each window's loss w.r.t. layer 1's v_proj output via autograd.grad
    expect = torch.zeros(x.shape[1], dtype=torch.float64)
    for w in range(2):
        store = {}
        h = model.model.layers[1].self_attn.v_proj.register_forward_hook(lambda m, a, o: store.setdefault("v", o))
        emb = model.model.embed_tokens
        h2 = emb.register_forward_hook(lambda m, a, o: o.requires_grad_(True))
        with torch.enable_grad():
            loss = model(input_ids=x[w : w + 1], labels=x[w : w + 1]).loss
            (g,) = torch.autograd.grad(loss, store["v"])
        h.remove(); h2.remove()
        expect += g[0].double().pow(2).sum(-1)
    assert torch.allclose(norms["v"][1], (expect / 2).sqrt(), rtol=1e-5, atol=1e-12)
    assert set(norms) == {"attn_in", "q", "k", "v"} and norms["q"].shape == (2, x.shape[1])


def test_a_sink_head_concentrates_the_value_gradient_on_position_0(tok, windows):
    model = sink_model(tok)  # layer 0 head 0 looks only at BOS; the other heads are uniform
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    res = gradient_sinks(model, windows.input_ids[:2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    # every query reads BOS's value in the sink head, so BOS's value gradient collects all of them;
    # the same model with the sink removed (k = 0: uniform attention) has a far smaller ratio
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.zero_()
    no_sink = gradient_sinks(model, windows.input_ids[:2])
    assert res["v"]["r_gs"][0] > 3 * no_sink["v"]["r_gs"][0]
    assert res["v"]["r_gs"][1] == pytest.approx(no_sink["v"]["r_gs"][1], rel=0.2)  # layer 1 has no sink either way


def test_ratio_definition():
    n = torch.tensor([[4.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    assert gradient_sink_ratio(n, 0).tolist() == pytest.approx([2.0, 1.0])
    assert gradient_sink_ratio(n, 2).tolist() == pytest.approx([2 / (8 / 3), 1.0])
