"""Gemma 1 (``gemma``: Llama's pre-norm layout, RMSNorm as x * (1 + w), embedding scaled by sqrt(hidden)
inside the model) on a tiny random model built offline, widths not powers of two.

Known answers: every block linear is found; the profiler's statistics equal those of
``output_hidden_states``; a planted uniform-attention sink gives alpha = mean_i 1/(i+1); every handling
method keeps the function with quantization off, and Hadamard folds the residual rotation (the norms end
at w = 0, i.e. a factor 1 + 0, which a ``w = 1`` reset would break).
"""

import pytest
import torch

from qsink.measure.collect import profile
from qsink.models.adapter import adapter_for
from qsink.quant import check_combination, get_scheme
from tests.conftest import (HANDLING_SCHEME, assert_profile_matches, function_kept_rel, handling_names, n_linear_modules,
                            randomize_norms, residual_states, uniform_bos_alpha)

D, FFN, HEADS, HEAD_DIM = 48, 96, 2, 24


def tiny_gemma(tok, layers: int = 2, seed: int = 0):
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(seed)
    cfg = GemmaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=FFN, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HEAD_DIM, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, pad_token_id=0, eos_token_id=1)
    return randomize_norms(GemmaForCausalLM(cfg).eval(), center=0.0)  # x * (1 + w): w's natural center is 0


def test_adapter_layout(tok):
    model = tiny_gemma(tok)
    ad = adapter_for(model)
    assert ad.family == "gemma" and ad.norm_offset == 1.0 and ad.can_rotate_residual()
    for block in ad.blocks(model):
        assert len(ad.linears(block)) == n_linear_modules(block) == 7
        assert ad.norm_before_attention(block) is block.input_layernorm
    # the embedding module itself scales by sqrt(hidden): h_0 is the embedding module's output
    ids = torch.tensor([[0, 5, 9]])
    with torch.no_grad():
        h0 = model(input_ids=ids, output_hidden_states=True).hidden_states[0]
        raw = torch.nn.functional.embedding(ids, model.model.embed_tokens.weight)
    torch.testing.assert_close(h0, raw * D**0.5, rtol=1e-3, atol=1e-5)


def test_profile_matches_hidden_states(tok, data):
    windows, _ = data
    model = tiny_gemma(tok)
    prof = profile(model, tok, windows).to_dict()
    assert_profile_matches(prof, residual_states(model, windows.input_ids, model.model.norm))


def test_a_planted_sink_has_the_uniform_alpha(tok, data):
    windows, _ = data
    model = tiny_gemma(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()  # every score 0: uniform over the visible keys
    prof = profile(model, tok, windows).to_dict()
    for alpha in prof["attention"]["alpha_mean_per_layer"]:
        assert alpha == pytest.approx(uniform_bos_alpha(windows.ctx), rel=1e-4)


@pytest.mark.parametrize("handling", handling_names())
def test_every_accepted_method_keeps_the_function(tok, data, handling):
    windows, calib = data
    check_combination(get_scheme(HANDLING_SCHEME.get(handling, "w8a8")), handling)  # each accepts its test scheme
    model = tiny_gemma(tok)
    rel, report, q = function_kept_rel(model, handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)
    if handling in ("hadamard", "quarot"):
        rot = report["handling"] if handling == "hadamard" else report["handling"]["rotation"]
        assert rot["mode"] == "residual"  # pre-norm RMSNorms only: the rotation is folded
        norms = [q.model.norm] + [n for b in q.model.layers for n in (b.input_layernorm, b.post_attention_layernorm)]
        assert all(torch.equal(n.weight, torch.zeros_like(n.weight)) for n in norms)  # factor 1 + 0
        E0, E1 = model.model.embed_tokens.weight.double(), q.model.embed_tokens.weight.double()
        assert not torch.allclose(E0, E1, atol=1e-3)  # really rotated
        assert torch.allclose(E1 @ E1.T, E0 @ E0.T, rtol=1e-5, atol=1e-4)
