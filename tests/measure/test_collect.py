"""Known answers: a planted spike and constructed sink heads, reported where they were put."""

import math
import statistics

import pytest
import torch

from qsink.errors import QsinkError
from qsink.measure.collect import profile
from qsink.measure.options import ProfileSettings
from tests.conftest import HEADS, LAYERS, MARKER_CH, SPIKE_CH, V, planted_spike_model
from tests.measure.conftest import sink_model


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


def lower_median(values) -> float:
    """The middle value of a sorted list, the lower one for an even count (torch.median's convention,
    which the profiler uses for each window's median and each linear's channel median)."""
    v = sorted(values)
    return v[(len(v) - 1) // 2]


def forward_reference(model, windows, blocks, final_norm):
    """Independently of the profiler: the residual streams h_0..h_L from ``output_hidden_states``
    (h_L taken at the final norm's input, since transformers' last hidden state is after that norm)
    and the per-channel absmax of every block linear's input from forward pre-hooks of our own."""
    absmax, handles, last = {}, [], []

    def keep(key):
        def hook(mod, args):
            m = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
            absmax[key] = m if key not in absmax else torch.maximum(absmax[key], m)
        return hook

    for l, block in enumerate(blocks):
        for name, mod in block.named_modules():
            if isinstance(mod, torch.nn.Linear):
                handles.append(mod.register_forward_pre_hook(keep((l, name))))
    handles.append(final_norm.register_forward_pre_hook(lambda mod, args: last.append(args[0].detach())))
    try:
        with torch.no_grad():
            hs = model(input_ids=windows.input_ids, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for h in handles:
            h.remove()
    assert len(hs) == len(blocks) + 1 and len(last) == 1
    return list(hs[:-1]) + last, absmax


def assert_profile_matches_forward(p, tok, windows, residuals, absmax, top_k):
    ids = windows.input_ids
    assert len(p["layers"]) == len(residuals)
    for l, h in enumerate(residuals):
        d, a = p["layers"][l], h.float().abs()
        largest = float(a.max())
        assert d["top1"] == pytest.approx(largest, rel=1e-5)
        assert d["inf_norm"] == pytest.approx(largest, rel=1e-5)
        # median |h|: the median over windows of each window's (lower) median
        median = statistics.median(lower_median(a[b].flatten().tolist()) for b in range(a.shape[0]))
        assert d["median"] == pytest.approx(median, rel=1e-5)
        assert d["top1_median"] == pytest.approx(largest / median, rel=1e-5)
        x = h.double()
        c = x - x.mean(dim=-1, keepdim=True)
        kurt = c.pow(4).mean(dim=-1) / c.pow(2).mean(dim=-1).pow(2)
        assert d["kurtosis_mean"] == pytest.approx(float(kurt.mean()), rel=1e-4)
        assert d["kurtosis_max"] == pytest.approx(float(kurt.max()), rel=1e-4)
        # top-k: the k largest values (ties, e.g. the BOS position repeated in every window, in any
        # order), each pointing at a distinct coordinate that holds it
        top = d["top"]
        assert len(top) == top_k
        assert [t["value"] for t in top] == pytest.approx(a.flatten().topk(top_k).values.tolist(), rel=1e-5)
        assert len({(t["window"], t["position"], t["channel"]) for t in top}) == top_k
        for t in top:
            assert float(a[t["window"], t["position"], t["channel"]]) == pytest.approx(t["value"], rel=1e-5)
            assert t["token"] == tok.decode([int(ids[t["window"], t["position"]])])
    lin = {(d["layer"], d["linear"]): d for d in p["linear_inputs"]}
    assert set(lin) == set(absmax)
    for key, m in absmax.items():
        d = lin[key]
        assert d["absmax_max"] == pytest.approx(float(m.max()), rel=1e-5)
        assert d["absmax_median"] == pytest.approx(lower_median(m.tolist()), rel=1e-5, abs=1e-12)
        assert d["top_values"] == pytest.approx(m.topk(len(d["top_values"])).values.tolist(), rel=1e-5, abs=1e-12)
        assert len(d["top_values"]) == min(4, m.numel())
        for ch, v in zip(d["top_channels"], d["top_values"]):
            assert float(m[ch]) == pytest.approx(v, rel=1e-5, abs=1e-12)


def test_layer_statistics_match_hidden_states(tok, windows):
    model = planted_spike_model(tok, 1, 4)
    p = profile(model, tok, windows, ProfileSettings(top_k=3)).to_dict()
    residuals, absmax = forward_reference(model, windows, model.model.layers, model.model.norm)
    assert len(residuals) == LAYERS + 1
    assert_profile_matches_forward(p, tok, windows, residuals, absmax, top_k=3)
    # the planted spike is what the largest |h| sees on the plateau, not on the clean layers
    assert max(float(residuals[l].abs().max()) for l in (2, 3, 4)) == pytest.approx(V, rel=1e-3)


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
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=16, n_layer=1, n_head=2)).eval()
    with pytest.raises(QsinkError, match="supported families: .*gemma.*gpt2.*gpt_neox.*llama.*mistral.*olmo2.*opt.*phi3.*qwen2"):
        profile(model, tok, windows)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gpt_neox"])
def test_other_families_profile(tok, windows, family):
    """Each family's profile against its own forward: every layer's top-1, median, largest |h| and
    kurtosis, and every block linear's input absmax, to float32 precision."""
    import transformers

    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=HEADS, max_position_embeddings=64)
    torch.manual_seed(0)
    if family == "gpt_neox":
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**common))
        blocks, final_norm = model.gpt_neox.layers, model.gpt_neox.final_layer_norm
        expected_linears = {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
    else:
        cls, cfg = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if family == "qwen2"
                    else (transformers.MistralForCausalLM, transformers.MistralConfig))
        model = cls(cfg(num_key_value_heads=2, **common))
        blocks, final_norm = model.model.layers, model.model.norm
        expected_linears = {f"self_attn.{n}_proj" for n in "qkvo"} | {f"mlp.{n}_proj" for n in ("gate", "up", "down")}
    model.eval()
    p = profile(model, tok, windows, ProfileSettings(top_k=5)).to_dict()
    assert p["n_layers"] == 2 and len(p["layers"]) == 3
    assert len(p["attention"]["alpha"]) == 2 and len(p["attention"]["alpha"][0]) == HEADS
    assert all(0 <= a <= 1 for row in p["attention"]["alpha"] for a in row)
    residuals, absmax = forward_reference(model, windows, blocks, final_norm)
    assert {name for _, name in absmax} == expected_linears  # the hooks really saw every linear by name
    assert_profile_matches_forward(p, tok, windows, residuals, absmax, top_k=5)
    assert all(math.isfinite(d["ratio"]) for d in p["linear_inputs"])


def test_attention_that_returns_no_weights_is_an_error_not_a_zero_sink_ratio(tok, windows, monkeypatch):
    """A model whose attention gives back no weights under eager attention cannot be given sink
    statistics; the profile says so in one line instead of reporting alpha = 0."""
    from tests.conftest import tiny_llama

    model = tiny_llama(tok)
    for block in model.model.layers:
        forward = block.self_attn.forward
        block.self_attn.forward = lambda *a, _f=forward, **k: (_f(*a, **k)[0], None)
    with pytest.raises(QsinkError, match="returned no weights under eager attention.*--attn-windows 0"):
        profile(model, tok, windows)
    assert profile(model, tok, windows, ProfileSettings(attn_windows=0)).summary["sink_ratio"] is None
