"""Gemma 3 (sandwich norms, QK-norm, RMSNorm as x * (1 + w), sliding windows, a scaled embedding) on a
tiny random model built offline from its transformers config, with widths that are not powers of two.

Known answers: the adapter finds every linear of the blocks; SmoothQuant and Hadamard keep the
function with quantization off (SmoothQuant folds into the (1 + w) norms, which fails if the fold
were written as w / s); the profiler's residual statistics equal those computed from
``output_hidden_states``; a sink planted on BOS is found through the sliding-window attention.
"""

import copy

import numpy as np
import pytest
import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.measure.collect import profile
from qsink.models.adapter import adapter_for
from qsink.quant import get_scheme, quantize_
from qsink.quant.apply import set_mode
from tests.conftest import GEMMA_WIDTH as D, GEMMA_WINDOW as WINDOW, SAMPLE_TEXT, tiny_gemma3


@pytest.fixture(scope="module")
def windows(tok):
    return make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31)


@pytest.fixture(scope="module")
def calib(tok):
    return make_windows(tok, Text("c", SAMPLE_TEXT[::-1], "0"), ctx=32, max_tokens=3 * 31)


def test_the_adapter_finds_every_block_linear_and_the_sandwich_layout(tok):
    model = tiny_gemma3(tok)
    ad = adapter_for(model)
    assert ad.family == "gemma3" and ad.norm_offset == 1.0 and not ad.can_rotate_residual()
    for block in ad.blocks(model):
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in block.modules())
        assert len(ad.linears(block)) == n_linear == 7
        assert ad.norm_before_attention(block) is block.input_layernorm
        assert ad.module(block, ad.post_attn_norm) is block.pre_feedforward_layernorm
        readers = dict(ad.norm_groups)
        assert set(readers["input_layernorm"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}


def test_divide_norm_uses_the_one_plus_w_parametrization(tok):
    model = tiny_gemma3(tok, layers=1)
    ad = adapter_for(model)
    norm = model.model.layers[0].input_layernorm
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
def test_function_is_kept_with_quantization_off(tok, windows, calib, handling):
    model = tiny_gemma3(tok)
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


def test_profile_matches_hidden_states(tok, windows):
    model = tiny_gemma3(tok)
    prof = profile(model, tok, windows).to_dict()
    ids = windows.input_ids
    captured = {}
    final = model.model.norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("last", a[0].detach()))
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


def test_a_bos_sink_is_seen_through_sliding_windows(tok, windows):
    """Zero queries make every head uniform over the keys it may see: 1/(i+1) inside the first window,
    and nothing on key 0 once a sliding layer's window has moved past it."""
    model = tiny_gemma3(tok, layers=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    prof = profile(model, tok, windows).to_dict()
    T = windows.ctx
    types = model.config.layer_types
    for layer, alpha in enumerate(prof["attention"]["alpha_mean_per_layer"]):
        keys = torch.arange(1, T)  # queries i >= 1
        seen = (keys + 1).clamp(max=WINDOW) if types[layer] == "sliding_attention" else keys + 1
        on_bos = torch.where(keys < (WINDOW if types[layer] == "sliding_attention" else T), 1.0 / seen, 0.0)
        assert alpha == pytest.approx(float(on_bos.mean()), rel=1e-4), (layer, types[layer])
