"""Known answers: a planted spike and constructed sink heads, reported where they were put."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.corpora import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.measure import ProfileSettings, profile
from qsink.measure import stats
from tests.conftest import SAMPLE_TEXT, make_tokenizer

D, LAYERS, HEADS = 32, 6, 4
SPIKE_CH, MARKER_CH, CONST_CH = 11, 3, 5
V = 5000.0


def _tiny(tok, layers=LAYERS):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=D, intermediate_size=16, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=64,
                      rope_theta=1e6, bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def windows(tok):
    return make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31)


def planted_spike_model(tok, inject_block, cancel_block):
    """Blocks are identities except: block ``inject_block``'s FFN adds V to SPIKE_CH on the BOS token,
    and block ``cancel_block``'s FFN removes it again."""
    model = _tiny(tok)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0, 0.1)
        emb[:, [SPIKE_CH, MARKER_CH]] = 0.0
        emb[tok.bos_token_id, MARKER_CH] = 1.0  # only position 0 (BOS) carries the marker
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        # inject: silu(s * x_m) * x_m is nonzero only where the marker is
        s = 4.0
        e = emb[tok.bos_token_id]
        x_m = float(e[MARKER_CH] / torch.sqrt(e.pow(2).mean() + model.config.rms_norm_eps))
        mlp = model.model.layers[inject_block].mlp
        mlp.gate_proj.weight.zero_(); mlp.up_proj.weight.zero_()
        mlp.gate_proj.weight[0, MARKER_CH] = s
        mlp.up_proj.weight[0, MARKER_CH] = 1.0
        mlp.down_proj.weight[SPIKE_CH, 0] = V / (F.silu(torch.tensor(s * x_m)) * x_m)
        # cancel: read the spike channel itself (zero on every other token)
        mlp = model.model.layers[cancel_block].mlp
        mlp.gate_proj.weight.zero_(); mlp.up_proj.weight.zero_()
        h = e.clone(); h[SPIKE_CH] = V
        x_c = float(h[SPIKE_CH] / torch.sqrt(h.pow(2).mean() + model.config.rms_norm_eps))
        mlp.gate_proj.weight[0, SPIKE_CH] = s
        mlp.up_proj.weight[0, SPIKE_CH] = 1.0
        mlp.down_proj.weight[SPIKE_CH, 0] = -V / (F.silu(torch.tensor(s * x_c)) * x_c)
    return model


def test_planted_spike_is_found_where_it_was_put(tok, windows):
    inject, cancel = 1, 4  # h_2 .. h_4 carry the spike; h_5 is clean again
    model = planted_spike_model(tok, inject, cancel)
    p = profile(model, tok, windows).to_dict()
    s = p["summary"]
    assert s["has_massive"]
    assert s["spike_channels"] == [SPIKE_CH]
    assert s["spike_magnitude"] == pytest.approx(V, rel=1e-3)
    assert p["massive"]["plateau_layers"] == [inject + 1, inject + 2, inject + 3]
    assert s["step_up_layer"] == inject + 1 and s["step_down_layer"] == cancel + 1
    assert [d["position"] for d in p["massive"]["positions"]] == [0]
    assert p["massive"]["positions"][0]["windows"] == windows.n_windows
    assert s["spike_tokens"][0] == f"position 0 ({windows.n_windows}/{windows.n_windows} windows)"
    for layer in (inject + 1, cancel):
        top = p["layers"][layer]["top"][0]
        assert (top["position"], top["channel"], top["token"]) == (0, SPIKE_CH, tok.bos_token)
        assert p["layers"][layer]["n_massive"] == windows.n_windows
    for layer in (0, inject, cancel + 1, LAYERS):
        assert p["layers"][layer]["n_massive"] == 0 and p["layers"][layer]["top1"] < 1.5  # marker channel = 1
    # the FFN input of the cancelling block sees the spike channel as its outlier
    lin = {(d["layer"], d["linear"]): d for d in p["linear_inputs"]}
    assert lin[(cancel, "mlp.gate_proj")]["top_channels"][0] == SPIKE_CH
    # identical BOS embeddings in every window: the spike token's post-norm vector is constant
    assert s["near_constancy"] == pytest.approx(1.0, abs=1e-5)


def test_layer_statistics_match_hidden_states(tok, windows):
    model = planted_spike_model(tok, 1, 4)
    p = profile(model, tok, windows, ProfileSettings(top_k=3)).to_dict()
    with torch.no_grad():
        hs = model(input_ids=windows.input_ids, output_hidden_states=True).hidden_states
    for l in range(LAYERS):  # transformers' last hidden state is after the final norm; skip it
        h = hs[l]
        d = p["layers"][l]
        assert d["top1"] == pytest.approx(float(h.abs().max()), rel=1e-5)
        assert d["kurtosis_mean"] == pytest.approx(float(stats.token_kurtosis(h).double().mean()), rel=1e-4)
        medians = sorted(float(h[b].abs().median()) for b in range(h.shape[0]))
        assert medians[0] <= d["median"] <= medians[-1]
        assert [t["value"] for t in d["top"]] == sorted((t["value"] for t in d["top"]), reverse=True)


def sink_model(tok):
    """Block 0, head 0 attends to the BOS key only; every other head attends uniformly (q = 0)."""
    model = _tiny(tok, layers=2)
    hd = D // HEADS
    j = hd // 2 - 1  # lowest RoPE frequency: with theta 1e6 the rotation over 32 positions is negligible
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0, 0.1)
        emb[:, MARKER_CH] = 0.0
        emb[tok.bos_token_id, MARKER_CH] = 1.0
        emb[:, CONST_CH] = 1.0
        for block in model.model.layers:
            block.self_attn.q_proj.weight.zero_()
        attn = model.model.layers[0].self_attn
        attn.k_proj.weight.zero_()
        attn.q_proj.weight[j, CONST_CH] = 10.0
        attn.k_proj.weight[j, MARKER_CH] = 10.0
    return model


def test_sink_heads_known_answer(tok, windows):
    model = sink_model(tok)
    before = model.config._attn_implementation
    p = profile(model, tok, windows, ProfileSettings(sink_eps=0.3)).to_dict()
    alpha = p["attention"]["alpha"]
    assert alpha[0][0] > 0.999
    # uniform heads: query i spreads 1/(i+1) on each key, so alpha = mean_{i=1..T-1} 1/(i+1)
    T = windows.ctx
    uniform = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    for l in range(2):
        for h in range(HEADS):
            if (l, h) != (0, 0):
                assert alpha[l][h] == pytest.approx(uniform, rel=1e-4)
    assert p["attention"]["sink_heads"] == [{"layer": 0, "head": 0, "alpha": alpha[0][0]}]
    assert p["summary"]["sink_ratio"] == pytest.approx(1 / (2 * HEADS))
    assert p["attention"]["secondary_sinks"] == []
    assert model.config._attn_implementation == before  # eager only while profiling


def test_attention_on_a_bounded_number_of_windows(tok, windows):
    p = profile(sink_model(tok), tok, windows, ProfileSettings(attn_windows=1), batch_size=3).to_dict()
    assert p["attention"]["n_windows"] == 1 and p["n_windows"] == windows.n_windows
    assert p["attention"]["alpha"][0][0] > 0.999


def test_hooks_are_removed_even_after_failure(tok, windows):
    model = planted_spike_model(tok, 1, 4)
    profile(model, tok, windows)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[7, 0] = float("inf")
        model.model.layers[2].mlp.gate_proj.weight[0, MARKER_CH] = 1.0
    with pytest.raises(QsinkError, match=r"non-finite activation in layer 3 .*window 0, position 0"):
        profile(model, tok, windows)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_unknown_architecture_lists_supported_families(tok, windows):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    with pytest.raises(QsinkError, match="supported families: .*gpt_neox.*llama.*mistral.*qwen2"):
        profile(model, tok, windows)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gpt_neox"])
def test_other_families_profile(tok, windows, family):
    import transformers

    common = dict(vocab_size=len(tok), hidden_size=D, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=HEADS, max_position_embeddings=64)
    if family == "gpt_neox":
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**common))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(num_key_value_heads=2, **common))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(num_key_value_heads=2, **common))
    p = profile(model.eval(), tok, windows).to_dict()
    assert p["n_layers"] == 2 and len(p["layers"]) == 3
    assert len(p["attention"]["alpha"]) == 2 and len(p["attention"]["alpha"][0]) == HEADS
    assert all(0 <= a <= 1 for row in p["attention"]["alpha"] for a in row)
    assert len(p["linear_inputs"]) >= 2 * 4 and all(math.isfinite(d["ratio"]) for d in p["linear_inputs"])
