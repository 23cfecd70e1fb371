"""GPT-2 (``gpt2``: LayerNorm with bias, transformers' Conv1D linears with weights stored (in, out), fused
c_attn, GELU, learned positions added after the token embedding) on a tiny random model built offline,
widths not powers of two.

Known answers: the adapter finds every Conv1D; turning them into nn.Linear keeps the function; h_0 is
wte + wpe (``output_hidden_states[0]``), not the token embedding alone; the profiler's statistics equal
those of ``output_hidden_states``; a planted uniform-attention sink gives alpha = mean_i 1/(i+1); every
handling method keeps the function with quantization off (SmoothQuant folds into LayerNorm weight and
bias and the v rows of c_attn; Hadamard online); KV quantization quantizes exactly the k and v rows of
c_attn's output.
"""

import copy

import pytest
import torch

from qsink.measure.collect import profile
from qsink.models.adapter import adapter_for
from qsink.quant import get_scheme, quantize_
from tests.conftest import (FAMILY_HEADS, FAMILY_WIDTH, assert_profile_matches, function_kept_rel, handling_names,
                            logits_of, n_linear_modules, residual_states, tiny_gpt2, uniform_bos_alpha)
from tests.models.conftest import int_fake_per_group

D, HEADS = FAMILY_WIDTH, FAMILY_HEADS  # 48, 4
HEAD_DIM = D // HEADS


def test_adapter_finds_the_conv1d_layers(tok):
    from transformers.pytorch_utils import Conv1D

    model = tiny_gpt2(tok)
    ad = adapter_for(model)
    assert ad.family == "gpt2" and not ad.can_rotate_residual()
    for block in ad.blocks(model):
        found = ad.linears(block)
        assert len(found) == n_linear_modules(block) == 4
        assert set(found) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
        assert all(isinstance(m, Conv1D) for m in found.values())


def test_conv1d_to_linear_keeps_the_function(tok, data):
    from transformers.pytorch_utils import Conv1D

    windows, _ = data
    model = tiny_gpt2(tok)
    ref = logits_of(model, windows.input_ids)
    m = copy.deepcopy(model)
    ad = adapter_for(m)
    assert ad.linearize_(m) == 8
    assert not any(isinstance(x, Conv1D) for x in m.modules())
    c_attn = m.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, torch.nn.Linear) and c_attn.weight.shape == (3 * D, D)
    torch.testing.assert_close(c_attn.weight, model.transformer.h[0].attn.c_attn.weight.T)
    out = logits_of(m, windows.input_ids)
    assert float((out - ref).norm() / ref.norm()) < 1e-6
    assert ad.linearize_(m) == 0  # nothing left to convert


def test_h0_is_token_plus_position_embedding(tok, data):
    windows, _ = data
    model = tiny_gpt2(tok)
    ids = windows.input_ids
    prof = profile(model, tok, windows).to_dict()
    pos = torch.arange(ids.shape[1])
    with torch.no_grad():
        h0 = model.transformer.wte(ids) + model.transformer.wpe(pos)[None]
        wte_only = model.transformer.wte(ids)
    assert prof["layers"][0]["top1"] == pytest.approx(float(h0.abs().max()), rel=1e-5)
    assert float(h0.abs().max()) != pytest.approx(float(wte_only.abs().max()), rel=1e-3)


def test_profile_matches_hidden_states(tok, data):
    windows, _ = data
    model = tiny_gpt2(tok)
    prof = profile(model, tok, windows).to_dict()
    assert_profile_matches(prof, residual_states(model, windows.input_ids, model.transformer.ln_f))


def test_a_planted_sink_has_the_uniform_alpha(tok, data):
    windows, _ = data
    model = tiny_gpt2(tok)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :D].zero_()  # Conv1D (in, out): the q columns
            block.attn.c_attn.bias[:D].zero_()
    prof = profile(model, tok, windows).to_dict()
    for alpha in prof["attention"]["alpha_mean_per_layer"]:
        assert alpha == pytest.approx(uniform_bos_alpha(windows.ctx), rel=1e-4)


@pytest.mark.parametrize("handling", handling_names())
def test_every_accepted_method_keeps_the_function(tok, data, handling):
    windows, calib = data
    model = tiny_gpt2(tok)
    rel, report, q = function_kept_rel(model, handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)
    if handling == "hadamard":
        assert report["handling"]["mode"] == "online"
    if handling == "smoothquant":  # folded into LayerNorm weight AND bias: both divided by the same s
        ln0, ln1 = model.transformer.h[0].ln_1, q.transformer.h[0].ln_1
        s_w, s_b = ln0.weight / ln1.weight, ln0.bias / ln1.bias
        torch.testing.assert_close(s_w, s_b, rtol=1e-4, atol=0)
        assert not torch.allclose(s_w, torch.ones_like(s_w))


def test_kv_quantization_hits_exactly_the_k_and_v_rows(tok, data):
    _, calib = data
    model = tiny_gpt2(tok)
    ref = copy.deepcopy(model.transformer.h[0].attn.c_attn)
    quantize_(model, get_scheme("fp+kv8"), "none", calib, tok, sqnr=False)
    c_attn = model.transformer.h[0].attn.c_attn
    assert f"rows {D}:{3 * D}" in repr(c_attn)
    x = torch.randn(2, 7, D)
    with torch.no_grad():
        fp, y = ref(x), c_attn(x)
    torch.testing.assert_close(y[..., :D], fp[..., :D], rtol=1e-6, atol=1e-6)  # q untouched
    torch.testing.assert_close(y[..., D:], int_fake_per_group(fp[..., D:], 8, HEAD_DIM), rtol=1e-5, atol=1e-6)
    assert not torch.equal(y[..., D:], fp[..., D:])
