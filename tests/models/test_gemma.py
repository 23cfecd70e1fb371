"""Gemma 3 (sandwich norms, QK-norm, RMSNorm as x * (1 + w), sliding windows, a scaled embedding) on a
tiny random model built offline from its transformers config, with widths that are not powers of two.

Known answers: the adapter finds every linear of the blocks; SmoothQuant and Hadamard keep the
function with quantization off (SmoothQuant folds into the (1 + w) norms, which fails if the fold
were written as w / s); the profiler's residual statistics equal those computed from
``output_hidden_states``; a sink planted on BOS is found through the sliding-window attention.
Every test runs on the text model (``gemma3_text``, 270M and 1B) and on the same blocks inside the
image-text model (``gemma3``, 4B and up), whose vision tower stays untouched.
"""

import copy

import numpy as np
import pytest
import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.measure.collect import profile
from qsink.evaluate.perplexity import window_nll
from qsink.models.adapter import adapter_for, text_config
from qsink.quant import get_scheme, quantize_
from qsink.quant.apply import set_mode
from tests.conftest import GEMMA_WIDTH as D, GEMMA_WINDOW as WINDOW, SAMPLE_TEXT, tiny_gemma3


@pytest.fixture(params=[False, True], ids=["gemma3_text", "gemma3"])
def build(request, tok):
    """Builds the tiny model (text-only or inside the image-text model) with the given options."""
    return lambda **kw: tiny_gemma3(tok, multimodal=request.param, **kw)


@pytest.fixture(scope="module")
def windows(tok):
    return make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31)


@pytest.fixture(scope="module")
def calib(tok):
    return make_windows(tok, Text("c", SAMPLE_TEXT[::-1], "0"), ctx=32, max_tokens=3 * 31)


def test_the_adapter_finds_every_block_linear_and_the_sandwich_layout(build):
    model = build()
    ad = adapter_for(model)
    assert len(ad.blocks(model)) == text_config(model).num_hidden_layers == 3
    assert ad.family == "gemma3" and ad.norm_offset == 1.0 and not ad.can_rotate_residual()
    for block in ad.blocks(model):
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in block.modules())
        assert len(ad.linears(block)) == n_linear == 7
        assert ad.norm_before_attention(block) is block.input_layernorm
        assert ad.module(block, ad.post_attn_norm) is block.pre_feedforward_layernorm
        readers = dict(ad.norm_groups)
        assert set(readers["input_layernorm"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}


def test_divide_norm_uses_the_one_plus_w_parametrization(build):
    model = build(layers=1)
    ad = adapter_for(model)
    norm = ad.blocks(model)[0].input_layernorm
    x = torch.randn(2, 5, D)
    before = norm(x)
    s = torch.rand(D) + 0.5
    ad.divide_norm(norm, s)
    torch.testing.assert_close(norm(x), before / s, rtol=1e-5, atol=1e-6)
    w_over_s = copy.deepcopy(norm)
    w_over_s.weight.data = (norm.weight.data + 1) * s - 1  # undo, then fold the wrong way
    w_over_s.weight.data = w_over_s.weight.data / s
    assert not torch.allclose(w_over_s(x), before / s, rtol=1e-3)


@pytest.mark.parametrize("handling", ["smoothquant", "hadamard"])
def test_function_is_kept_with_quantization_off(build, tok, windows, calib, handling):
    model = build()
    ids = windows.input_ids
    with torch.no_grad():
        ref = model(ids).logits
    q = copy.deepcopy(model)
    report = quantize_(q, get_scheme("w8a8"), handling, calib, tok, sqnr=False)
    set_mode(q, "off")  # rewrites kept, quantization off
    with torch.no_grad():
        out = q(ids).logits
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-4, (handling, rel)
    if handling == "hadamard":
        assert report["handling"]["mode"] == "online"  # post-norms write the residual: no folded rotation


def test_profile_matches_hidden_states(build, tok, windows):
    model = build()
    prof = profile(model, tok, windows).to_dict()
    ids = windows.input_ids
    captured = {}
    final = adapter_for(model).final_norm(model).register_forward_pre_hook(lambda m, a: captured.__setitem__("last", a[0].detach()))
    try:
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
    finally:
        final.remove()
    states = list(hs[:-1]) + [captured["last"]]  # transformers' last hidden state is after the final norm
    for d, h in zip(prof["layers"], states):
        a = h.abs()
        assert d["top1"] == pytest.approx(float(a.max()), rel=1e-5)
        per_window = [float(w.flatten().median()) for w in a]  # each window's (lower) median ...
        assert d["median"] == pytest.approx(float(np.median(per_window)), rel=1e-5)  # ... and their median


def test_a_bos_sink_is_seen_through_sliding_windows(build, tok, windows):
    """Zero queries make every head uniform over the keys it may see: 1/(i+1) inside the first window,
    and nothing on key 0 once a sliding layer's window has moved past it."""
    model = build(layers=2)
    with torch.no_grad():
        for layer in adapter_for(model).blocks(model):
            layer.self_attn.q_proj.weight.zero_()
    prof = profile(model, tok, windows).to_dict()
    T = windows.ctx
    types = text_config(model).layer_types
    for layer, alpha in enumerate(prof["attention"]["alpha_mean_per_layer"]):
        keys = torch.arange(1, T)  # queries i >= 1
        seen = (keys + 1).clamp(max=WINDOW) if types[layer] == "sliding_attention" else keys + 1
        on_bos = torch.where(keys < (WINDOW if types[layer] == "sliding_attention" else T), 1.0 / seen, 0.0)
        assert alpha == pytest.approx(float(on_bos.mean()), rel=1e-4), (layer, types[layer])


def test_quantize_touches_the_language_model_only_and_the_chunked_head_agrees(build, windows, calib, tok, monkeypatch):
    """Only the blocks' linears become QLinear (an image-text model's vision tower and projector keep
    theirs), and the perplexity head computed in chunks of positions equals the full logits' NLL."""
    import qsink.evaluate.perplexity as ppl_mod
    from qsink.quant.qlinear import QLinear

    model = build()
    ad = adapter_for(model)
    in_blocks = {id(m) for b in ad.blocks(model) for m in b.modules()}
    outside = {n: type(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) not in in_blocks}
    quantize_(model, get_scheme("w8a8"), "none", calib, tok, sqnr=False)
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 7 * len(ad.blocks(model))
    for name, kind in outside.items():  # lm_head, and the vision tower's linears in the image-text model
        assert type(model.get_submodule(name)) is kind, name
    ids = windows.input_ids[:2]
    with torch.no_grad():
        full = window_nll(model, ids)
        monkeypatch.setattr(ppl_mod, "LOGIT_BYTES", 4 * len(tok) * 5)  # a handful of positions per chunk
        chunked = window_nll(model, ids)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
