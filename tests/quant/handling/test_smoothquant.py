"""SmoothQuant directly: the fp function is unchanged, every scale follows
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` (computed here from our own hooks on the
unsmoothed model), and the defining properties hold on the smoothed model (alpha = 1: every smoothed
input channel peaks at exactly 1; alpha = 1/2: input and weight column peaks are equal)."""

import copy

import pytest
import torch

from qsink.models.adapter import adapter_for
from qsink.quant import check_combination, get_scheme, quantize_, set_mode
from tests.quant.conftest import logits

LOUD = 7  # the planted outlier channel of the residual stream (the conftest model's embedding column 7 x 30)


def input_absmax(model, windows, names):
    """Per-channel absmax over ``windows`` of the input of each ``(layer, linear path)`` in ``names``."""
    out, handles = {}, []
    for l, path in names:
        mod = model.model.layers[l].get_submodule(path)

        def hook(m, args, key=(l, path)):
            a = args[0].detach().double().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
            out[key] = a if key not in out else torch.maximum(out[key], a)

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        logits(model, windows.input_ids)
    finally:
        for h in handles:
            h.remove()
    return out


def col_absmax(*weights):
    """max_i |W_ij| per input column j, over all given weights (the linears that share an input)."""
    return torch.stack([w.detach().double().abs().amax(dim=0) for w in weights]).amax(dim=0)


def smooth(model, calib, tok, alpha):
    m = copy.deepcopy(model)
    handler = check_combination(get_scheme("w8a8"), "smoothquant", {"alpha": alpha})
    handler.tokenizer = tok
    handler.prepare(m, adapter_for(m), calib, get_scheme("w8a8"))
    return m, handler


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_rewrite_keeps_the_fp_function(model, tok, windows, calib, alpha):
    m, _ = smooth(model, calib, tok, alpha)
    assert rel(logits(m, windows.input_ids), logits(model, windows.input_ids)) < 1e-4
    assert not torch.equal(m.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)


def test_function_preservation_with_quantization_off(model, tok, windows, calib):
    ref = logits(model, windows.input_ids)
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w4a4"), "smoothquant", calib, tok, sqnr=False)
    set_mode(m, "off")
    assert rel(logits(m, windows.input_ids), ref) < 1e-4
    set_mode(m, "quant")
    assert rel(logits(m, windows.input_ids), ref) > 1e-3  # and quantization is on


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_scales_follow_the_formula(model, tok, calib, alpha):
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd, rep = cfg.hidden_size // n_heads, n_heads // n_kv
    names = [(l, p) for l in range(cfg.num_hidden_layers)
             for p in ("self_attn.q_proj", "mlp.gate_proj", "self_attn.o_proj", "mlp.down_proj")]
    X = input_absmax(model, calib, names)
    m, handler = smooth(model, calib, tok, alpha)

    def formula(x, w):
        return x.pow(alpha) / w.pow(1 - alpha)

    largest = 0.0
    for l, (b0, b1) in enumerate(zip(model.model.layers, m.model.layers)):
        a0, a1, f0, f1 = b0.self_attn, b1.self_attn, b0.mlp, b1.mlp
        # input norm -> q, k, v: one s shared by the three readers
        s_att = formula(X[(l, "self_attn.q_proj")], col_absmax(a0.q_proj.weight, a0.k_proj.weight, a0.v_proj.weight))
        assert torch.allclose(b1.input_layernorm.weight.double(), b0.input_layernorm.weight.double() / s_att, rtol=1e-5)
        for name in ("q_proj", "k_proj"):
            w0, w1 = getattr(a0, name).weight.double(), getattr(a1, name).weight.double()
            assert torch.allclose(w1, w0 * s_att[None, :], rtol=1e-5, atol=1e-7)
        # post-attention norm -> gate, up
        s_ffn = formula(X[(l, "mlp.gate_proj")], col_absmax(f0.gate_proj.weight, f0.up_proj.weight))
        assert torch.allclose(b1.post_attention_layernorm.weight.double(), b0.post_attention_layernorm.weight.double() / s_ffn,
                              rtol=1e-5)
        assert torch.allclose(f1.gate_proj.weight.double(), f0.gate_proj.weight.double() * s_ffn[None, :], rtol=1e-5, atol=1e-7)
        # v -> o: o's input column h*hd + c reads kv head h // rep; the query heads sharing a kv head
        # share one scale, the largest of theirs
        s_o = formula(X[(l, "self_attn.o_proj")], col_absmax(a0.o_proj.weight))
        s_kv = torch.empty(n_kv * hd, dtype=torch.float64)
        for g in range(n_kv):
            for c in range(hd):
                s_kv[g * hd + c] = max(float(s_o[h * hd + c]) for h in range(g * rep, (g + 1) * rep))
        s_o_cols = torch.tensor([float(s_kv[(h // rep) * hd + c]) for h in range(n_heads) for c in range(hd)],
                                dtype=torch.float64)
        v_expect = a0.v_proj.weight.double() * s_att[None, :] / s_kv[:, None]
        assert torch.allclose(a1.v_proj.weight.double(), v_expect, rtol=1e-5, atol=1e-7)
        assert torch.allclose(a1.o_proj.weight.double(), a0.o_proj.weight.double() * s_o_cols[None, :], rtol=1e-5, atol=1e-7)
        # up -> down
        s_d = formula(X[(l, "mlp.down_proj")], col_absmax(f0.down_proj.weight))
        up_expect = f0.up_proj.weight.double() * s_ffn[None, :] / s_d[:, None]
        assert torch.allclose(f1.up_proj.weight.double(), up_expect, rtol=1e-5, atol=1e-7)
        assert torch.allclose(f1.down_proj.weight.double(), f0.down_proj.weight.double() * s_d[None, :], rtol=1e-5, atol=1e-7)
        largest = max(largest, *(float(s.max()) for s in (s_att, s_ffn, s_kv, s_d)))
        if l == 0:  # the planted loud channel gets the largest scale of the first norm
            assert int(s_att.argmax()) == LOUD
    assert handler.report() == {"alpha": alpha, "max_scale": pytest.approx(largest, rel=1e-5)}


def test_alpha_one_moves_every_input_peak_to_one(model, tok, calib):
    """s = max|X|: after smoothing, each smoothed input channel peaks at exactly 1 on the calibration
    data, the planted loud channel included (o_proj's channels at most 1: their kv group shares the largest s)."""
    names = [(l, p) for l in range(2) for p in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj", "self_attn.o_proj")]
    before = input_absmax(model, calib, names)
    x = before[(0, "self_attn.q_proj")]
    assert int(x.argmax()) == LOUD and float(x[LOUD]) > 2 * float(x.median())  # the planted channel is the outlier
    m, _ = smooth(model, calib, tok, 1.0)
    after = input_absmax(m, calib, names)
    for (l, path), a in after.items():
        if path == "self_attn.o_proj":
            assert float(a.max()) <= 1 + 1e-5 and float(a.max()) == pytest.approx(1.0, rel=1e-5)
        else:
            assert torch.allclose(a, torch.ones_like(a), rtol=1e-5), (l, path)


def test_alpha_half_balances_input_and_weight_peaks(model, tok, calib):
    """s = sqrt(max|X| / max|W|): the smoothed input's and weight column's peaks meet at sqrt(max|X| max|W|).
    Checked on down_proj, the one reader whose weight no later rewrite touches (v and up have their
    rows rescaled afterwards by the o and down smoothing)."""
    names = [(l, "mlp.down_proj") for l in range(2)]
    before = input_absmax(model, calib, names)
    m, _ = smooth(model, calib, tok, 0.5)
    after = input_absmax(m, calib, names)
    for l, block in enumerate(m.model.layers):
        w_before = col_absmax(model.model.layers[l].mlp.down_proj.weight)
        w_after = col_absmax(block.mlp.down_proj.weight)
        assert torch.allclose(after[(l, "mlp.down_proj")], w_after, rtol=1e-4)
        assert torch.allclose(w_after, (before[(l, "mlp.down_proj")] * w_before).sqrt(), rtol=1e-4)
