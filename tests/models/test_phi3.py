"""Phi-3 (``phi3``: Llama's pre-norm RMSNorm layout with fused ``qkv_proj`` and ``gate_up_proj``) on a tiny
random model built offline, widths not powers of two.

Known answers: every block linear is found; the profiler's statistics equal those of
``output_hidden_states``; a planted uniform-attention sink gives alpha = mean_i 1/(i+1); every handling
method keeps the function with quantization off (SmoothQuant divides the v rows of qkv_proj and the up
rows of gate_up_proj, Hadamard folds the residual rotation); KV quantization quantizes exactly the k and v
rows of qkv_proj's output; the gradients see q, k and v as rows of the fused output.
"""

import pytest
import torch

from qsink.measure.collect import profile
from qsink.measure.gradients import gradient_norms
from qsink.models.adapter import adapter_for
from qsink.quant import get_scheme, quantize_
from tests.conftest import (FAMILY_FFN, FAMILY_HEADS, FAMILY_WIDTH, assert_profile_matches, function_kept_rel,
                            handling_names, n_linear_modules, residual_states, tiny_phi3, uniform_bos_alpha)
from tests.models.conftest import int_fake_per_group

D, FFN, HEADS = FAMILY_WIDTH, FAMILY_FFN, FAMILY_HEADS  # 48, 96, 4
KV_HEADS = 2  # tiny_phi3's default kv_heads (GQA)
HEAD_DIM = D // HEADS  # 12
Q, KV = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM  # 48, 24


def test_adapter_layout(tok):
    model = tiny_phi3(tok)
    ad = adapter_for(model)
    assert ad.family == "phi3" and ad.can_rotate_residual()
    block = ad.blocks(model)[0]
    assert len(ad.linears(block)) == n_linear_modules(block) == 4
    assert block.self_attn.qkv_proj.out_features == Q + 2 * KV
    v, rows = ad.rows(block, ad.value_pair[0])
    assert v is block.self_attn.qkv_proj and (rows.start, rows.stop) == (Q + KV, Q + 2 * KV)
    up, rows = ad.rows(block, ad.ffn_pair[0])
    assert up is block.mlp.gate_up_proj and (rows.start, rows.stop) == (FFN, 2 * FFN)  # chunk(2): gate, then up


def test_profile_matches_hidden_states(tok, data):
    windows, _ = data
    model = tiny_phi3(tok)
    prof = profile(model, tok, windows).to_dict()
    assert_profile_matches(prof, residual_states(model, windows.input_ids, model.model.norm))


def test_a_planted_sink_has_the_uniform_alpha(tok, data):
    windows, _ = data
    model = tiny_phi3(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight[:Q].zero_()  # the q rows: every score 0
    prof = profile(model, tok, windows).to_dict()
    for alpha in prof["attention"]["alpha_mean_per_layer"]:
        assert alpha == pytest.approx(uniform_bos_alpha(windows.ctx), rel=1e-4)


@pytest.mark.parametrize("handling", handling_names())
def test_every_accepted_method_keeps_the_function(tok, data, handling):
    windows, calib = data
    model = tiny_phi3(tok)
    rel, report, q = function_kept_rel(model, handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)
    if handling == "hadamard":
        assert report["handling"]["mode"] == "residual"
    if handling == "smoothquant":  # the q and k rows keep their columns' ratio; v and up rows were divided
        w0 = model.model.layers[0].self_attn.qkv_proj.weight
        w1 = q.model.layers[0].self_attn.qkv_proj.weight_fp
        col = w1[:Q] / w0[:Q]  # q rows: only multiplied by the per-column s
        torch.testing.assert_close(w1[Q : Q + KV] / w0[Q : Q + KV], col[:KV], rtol=1e-4, atol=0)
        assert not torch.allclose(w1[Q + KV :] / w0[Q + KV :], col[:KV], rtol=1e-2)


def test_kv_quantization_hits_exactly_the_k_and_v_rows(tok, data):
    _, calib = data
    model = tiny_phi3(tok)
    ref = model.model.layers[0].self_attn.qkv_proj
    quantize_(model, get_scheme("fp+kv4"), "none", calib, tok, sqnr=False)
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert "rows 48:96" in repr(qkv)
    x = torch.randn(3, 5, D)
    with torch.no_grad():
        fp, y = ref(x), qkv(x)
    torch.testing.assert_close(y[..., :Q], fp[..., :Q], rtol=0, atol=0)  # q untouched
    torch.testing.assert_close(y[..., Q:], int_fake_per_group(fp[..., Q:], 4, HEAD_DIM), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y[..., Q:], fp[..., Q:], atol=1e-4)


def test_gradients_see_the_rows_of_the_fused_projection(tok, data):
    windows, _ = data
    model = tiny_phi3(tok)
    ids = windows.input_ids[:1]
    norms = gradient_norms(model, ids)
    assert set(norms) == {"attn_in", "q", "k", "v"}
    out = {}

    def keep(module, args, o):
        o.retain_grad()
        out["o"] = o

    h = model.model.layers[1].self_attn.qkv_proj.register_forward_hook(keep)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        emb = model.model.embed_tokens(ids).requires_grad_(True)
        model(inputs_embeds=emb, labels=ids).loss.backward()
    finally:
        h.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    g = out["o"].grad[0]
    for kind, rows in (("q", slice(0, Q)), ("k", slice(Q, Q + KV)), ("v", slice(Q + KV, Q + 2 * KV))):
        torch.testing.assert_close(norms[kind][1].float(), g[:, rows].norm(dim=-1).float(), rtol=1e-4, atol=1e-8)
