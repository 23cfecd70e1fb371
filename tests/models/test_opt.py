"""OPT (``opt``: pre-norm LayerNorm with bias, q/k/v/out projections with bias, fc1 -> ReLU -> fc2 in the
block itself, learned positions added after the token embedding) on a tiny random model built offline,
widths not powers of two; and OPT-350m's post-norm layout, where the folds are refused.

Known answers: every block linear is found; h_0 is token + position embedding (``output_hidden_states[0]``);
the profiler's statistics equal those of ``output_hidden_states``; a planted uniform-attention sink gives
alpha = mean_i 1/(i+1); every handling method keeps the function with quantization off (SmoothQuant
folds into both LayerNorms, weight and bias, and v_proj -> out_proj; Hadamard online); on post-norm OPT
SmoothQuant is refused before any weight changes and the rest keeps the function.
"""

import pytest
import torch

from qsink.measure.attribution import sublayer_deltas
from qsink.measure.collect import profile
from qsink.errors import QsinkError
from qsink.models.adapter import adapter_for
from tests.conftest import (assert_profile_matches, assert_refused_untouched, function_kept_rel, handling_names,
                            n_linear_modules, residual_states, tiny_opt, uniform_bos_alpha)


def test_adapter_layout(tok):
    model = tiny_opt(tok)
    ad = adapter_for(model)
    assert ad.family == "opt" and not ad.can_rotate_residual() and ad.ffn_pair is None
    for block in ad.blocks(model):
        assert len(ad.linears(block)) == n_linear_modules(block) == 6
        assert ad.norm_before_attention(block) is block.self_attn_layer_norm
        assert dict(ad.norm_groups)["final_layer_norm"] == ("fc1",)
    assert ad.final_norm(model) is model.model.decoder.final_layer_norm


def test_h0_is_token_plus_position_embedding(tok, data):
    windows, _ = data
    model = tiny_opt(tok)
    prof = profile(model, tok, windows).to_dict()
    with torch.no_grad():
        h0 = model(input_ids=windows.input_ids, output_hidden_states=True).hidden_states[0]
        wte_only = model.model.decoder.embed_tokens(windows.input_ids)
    assert prof["layers"][0]["top1"] == pytest.approx(float(h0.abs().max()), rel=1e-5)
    assert not torch.allclose(h0, wte_only)


def test_profile_matches_hidden_states(tok, data):
    windows, _ = data
    model = tiny_opt(tok)
    prof = profile(model, tok, windows).to_dict()
    assert_profile_matches(prof, residual_states(model, windows.input_ids, model.model.decoder.final_layer_norm))


def test_a_planted_sink_has_the_uniform_alpha(tok, data):
    windows, _ = data
    model = tiny_opt(tok)
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.bias.zero_()  # a constant q would still score keys differently
    prof = profile(model, tok, windows).to_dict()
    for alpha in prof["attention"]["alpha_mean_per_layer"]:
        assert alpha == pytest.approx(uniform_bos_alpha(windows.ctx), rel=1e-4)


@pytest.mark.parametrize("handling", handling_names())
def test_every_accepted_method_keeps_the_function(tok, data, handling):
    windows, calib = data
    model = tiny_opt(tok)
    rel, report, q = function_kept_rel(model, handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)
    if handling == "hadamard":
        assert report["handling"]["mode"] == "online"
    if handling == "smoothquant":
        for name in ("self_attn_layer_norm", "final_layer_norm"):  # weight and bias divided by the same s
            n0, n1 = getattr(model.model.decoder.layers[0], name), getattr(q.model.decoder.layers[0], name)
            torch.testing.assert_close(n0.weight / n1.weight, n0.bias / n1.bias, rtol=1e-4, atol=0)


@pytest.mark.parametrize("handling", handling_names())
def test_post_norm_opt(tok, data, handling):
    """do_layer_norm_before=False (OPT-350m): the LayerNorms sit on the residual stream itself."""
    windows, calib = data
    model = tiny_opt(tok, prenorm=False)
    ad = adapter_for(model)
    assert ad.postnorm and ad.norm_before_attention(model.model.decoder.layers[0]) is None
    if handling in ("smoothquant", "awq", "awq+gptq"):  # the scale-folding methods
        msg = assert_refused_untouched(model, handling, calib, tok, "do_layer_norm_before=False")
        assert "post-norm" in msg and "\n" not in msg
        with pytest.raises(QsinkError, match="needs pre-norm blocks"):
            sublayer_deltas(model, windows.input_ids[:1], 0)
        return
    rel, report, _ = function_kept_rel(model, handling, windows, calib, tok)
    assert rel < 1e-4, (handling, rel)


def test_token_keep_reaches_fc1_and_fc2_which_read_flattened_tokens(tok, data):
    """OPT reshapes the stream to (B*T, D) before final_layer_norm, fc1 and fc2: the (B, T) keep mask must
    still keep the spike token's rows there (kept rows: fp input times quantized weight; others quantized)."""
    import torch.nn.functional as F

    from qsink.quant import get_scheme, quantize_
    from qsink.quant.handling.token_keep import TokenKeep

    class KeepFirst(TokenKeep):  # position 0 kept, whatever the tiny random model's activations are
        def prepare(self, model, adapter, calib, scheme):
            self.positions, self.token_ids = [0], []

    windows, calib = data
    model = tiny_opt(tok)
    quantize_(model, get_scheme("w4a4"), KeepFirst(), calib, tok, sqnr=False)
    seen = {}
    fc1, fc2 = model.model.decoder.layers[0].fc1, model.model.decoder.layers[0].fc2
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, (a[0], o))) for n, m in (("fc1", fc1), ("fc2", fc2))]
    try:
        ids = windows.input_ids[:2]
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    T = ids.shape[1]
    for name, mod in (("fc1", fc1), ("fc2", fc2)):
        x, y = seen[name]
        assert x.dim() == 2 and x.shape[0] == 2 * T
        kept = torch.zeros(2 * T, dtype=torch.bool)
        kept[[0, T]] = True  # position 0 of each window
        with torch.no_grad():
            fp_in = F.linear(x, mod.weight_q, mod.bias)
        torch.testing.assert_close(y[kept], fp_in[kept], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(y[~kept], fp_in[~kept], atol=1e-4)
