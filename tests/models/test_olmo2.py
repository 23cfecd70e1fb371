"""OLMo-2 (``olmo2``: norms AFTER attention and the FFN on what they write to the residual stream, q/k
norms, nothing in front of q/k/v) on a tiny random model built offline, widths not powers of two.

Known answers: every block linear is found; without an input norm the near-constancy statistic and the
gradients read attention's input (the block's input); the profiler's statistics equal those of
``output_hidden_states``; a planted uniform-attention sink gives alpha = mean_i 1/(i+1); every accepted
method keeps the function with quantization off (Hadamard online); SmoothQuant is refused before any
weight changes because there is no norm in front of q/k/v to fold into.
"""

import pytest
import torch

from qsink.measure.attribution import sublayer_deltas
from qsink.measure.collect import profile
from qsink.measure.gradients import gradient_norms
from qsink.models.adapter import adapter_for
from tests.conftest import (assert_profile_matches, assert_refused_untouched, function_kept_rel, handling_names,
                            n_linear_modules, residual_states, tiny_olmo2, uniform_bos_alpha)

REFUSED = {"smoothquant": "no norm in front of q/k/v", "awq": "no norm in front of q/k/v",
           "awq+gptq": "no norm in front of q/k/v"}


def test_adapter_layout(tok):
    model = tiny_olmo2(tok)
    ad = adapter_for(model)
    assert ad.family == "olmo2" and not ad.norm_groups and not ad.can_rotate_residual()
    for block in ad.blocks(model):
        assert len(ad.linears(block)) == n_linear_modules(block) == 7
        assert ad.norm_before_attention(block) is None


def test_attention_input_is_the_block_input(tok, data):
    """Without an input norm the 'post-norm' vectors are what attention reads: the residual stream entering
    the block, which is h_{l} of output_hidden_states."""
    windows, _ = data
    model = tiny_olmo2(tok)
    ad = adapter_for(model)
    seen = {}
    handles = [ad.hook_attention_input(b, lambda x, l=l: seen.__setitem__(l, x.detach().clone()))
               for l, b in enumerate(ad.blocks(model))]
    try:
        states = residual_states(model, windows.input_ids, model.model.norm)
    finally:
        for h in handles:
            h.remove()
    for l in range(len(ad.blocks(model))):
        torch.testing.assert_close(seen[l], states[l])


def test_gradients_and_attribution_without_an_input_norm(tok, data):
    windows, _ = data
    model = tiny_olmo2(tok)
    norms = gradient_norms(model, windows.input_ids[:2])
    assert set(norms) == {"attn_in", "q", "k", "v"} and norms["attn_in"].shape == (2, windows.ctx)
    # attn_in is the block input: its gradient is d loss / d h_l, found independently with autograd
    ids = windows.input_ids[:1]
    hs = {}
    handles = [b.register_forward_pre_hook(lambda m, a, k, l=l: hs.__setitem__(l, (a[0] if a else k["hidden_states"])),
                                           with_kwargs=True) for l, b in enumerate(model.model.layers)]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.model.embed_tokens(ids).requires_grad_(True)
        out = model(inputs_embeds=emb, labels=ids)
        grads = torch.autograd.grad(out.loss, [hs[0], hs[1]])
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    g1 = gradient_norms(model, ids)["attn_in"]
    for l in range(2):
        torch.testing.assert_close(g1[l].float(), grads[l][0].norm(dim=-1).float(), rtol=1e-4, atol=1e-8)
    deltas = sublayer_deltas(model, windows.input_ids[:1], position=0)  # h_mid: the FFN's input
    assert len(deltas) == 2 and all(set(d) == {"h_in", "h_mid", "h_out"} for d in deltas)


def test_profile_matches_hidden_states(tok, data):
    windows, _ = data
    model = tiny_olmo2(tok)
    prof = profile(model, tok, windows).to_dict()
    assert_profile_matches(prof, residual_states(model, windows.input_ids, model.model.norm))


def test_a_planted_sink_has_the_uniform_alpha(tok, data):
    windows, _ = data
    model = tiny_olmo2(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()  # q_norm(0) = 0: every score 0
    prof = profile(model, tok, windows).to_dict()
    for alpha in prof["attention"]["alpha_mean_per_layer"]:
        assert alpha == pytest.approx(uniform_bos_alpha(windows.ctx), rel=1e-4)


@pytest.mark.parametrize("handling", [h for h in handling_names() if h not in REFUSED])
def test_every_accepted_method_keeps_the_function(tok, data, handling):
    windows, calib = data
    rel, report, _ = function_kept_rel(tiny_olmo2(tok), handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)
    if handling == "hadamard":
        assert report["handling"]["mode"] == "online"


@pytest.mark.parametrize("handling", sorted(REFUSED))
def test_refused_before_any_weight_changes(tok, data, handling):
    _, calib = data
    msg = assert_refused_untouched(tiny_olmo2(tok), handling, calib, tok, REFUSED[handling])
    assert "\n" not in msg and "olmo2" in msg
