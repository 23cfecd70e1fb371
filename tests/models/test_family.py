"""qsink's own model family: every variant builds, trains a step, round-trips, and does what it says."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from qsink.data.windows import Windows
from qsink.errors import QsinkError
from qsink.measure.collect import profile
from qsink.models.family import VARIANTS, QsinkConfig, QsinkForCausalLM
from qsink.models.family.modeling import DynamicTanh, apply_rope, rope_cos_sin
from qsink.quant import get_scheme, quantize_, set_mode
from tests.conftest import make_tokenizer


def tiny(**kw):
    torch.manual_seed(0)
    cfg = QsinkConfig(vocab_size=320, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, **kw)
    return QsinkForCausalLM(cfg).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_forward_backward_and_round_trip(variant, tmp_path):
    model = tiny(**VARIANTS[variant])
    ids = torch.randint(0, 320, (2, 24))
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "qsink"
    back = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code: registered on import
    assert type(back) is QsinkForCausalLM and back.config.norm == model.config.norm
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)


def test_eager_and_sdpa_agree():
    model = tiny()
    ids = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        model.set_attn_implementation("eager")
        out = model.model.layers[0].self_attn(torch.randn(1, 4, 48), *rope_cos_sin(4, 12, 1e4, "cpu", torch.float32))
        assert out[1] is not None and out[1].shape == (1, 4, 4, 4)  # eager really ran
        slow = model(input_ids=ids).logits
    assert torch.allclose(fast, slow, atol=1e-5)


def test_dyt_formula():
    m = DynamicTanh(5, alpha_init=0.5)
    with torch.no_grad():
        m.weight.copy_(torch.arange(5.0))
        m.bias.fill_(0.25)
    x = torch.randn(3, 5)
    assert torch.allclose(m(x), torch.arange(5.0) * torch.tanh(0.5 * x) + 0.25)
    assert tiny(norm="dyt").model.layers[0].input_layernorm.alpha.item() == 0.5


def test_gate_shapes_and_effect():
    for gate, shape in (("head", (4, 48)), ("channel", (48, 48))):
        attn = tiny(gate=gate).model.layers[0].self_attn
        assert tuple(attn.gate_proj.weight.shape) == shape
    m = tiny(gate="static-head")
    attn = m.model.layers[0].self_attn
    x = torch.randn(1, 6, 48)
    cos, sin = rope_cos_sin(6, 12, 10000.0, x.device, x.dtype)
    with torch.no_grad():
        attn.gate_logit.fill_(-1e4)  # gates closed: the attention contributes nothing
        assert torch.allclose(attn(x, cos, sin)[0], torch.zeros(1, 6, 48), atol=1e-6)


def test_sandwich_norms_sit_on_sublayer_outputs():
    m = tiny(norm="sandwich")
    block = m.model.layers[0]
    seen = []
    block.attn_out_norm.register_forward_hook(lambda mod, i, o: seen.append(("attn_out", i[0].shape)))
    block.mlp_out_norm.register_forward_hook(lambda mod, i, o: seen.append(("mlp_out", i[0].shape)))
    m(input_ids=torch.randint(0, 320, (1, 8)))
    assert [s[0] for s in seen[:2]] == ["attn_out", "mlp_out"]
    assert not hasattr(tiny().model.layers[0], "attn_out_norm")


def test_softmax1_adds_a_zero_logit():
    m = tiny(softmax="softmax1")
    attn = m.model.layers[0].self_attn
    x = torch.randn(1, 5, 48)
    cos, sin = rope_cos_sin(5, 12, 10000.0, x.device, x.dtype)
    with torch.no_grad():
        _, w = attn(x, cos, sin)
        q = apply_rope(attn.q_proj(x).view(1, 5, 4, 12).transpose(1, 2), cos, sin)
        k = apply_rope(attn.k_proj(x).view(1, 5, 4, 12).transpose(1, 2), cos, sin)
    s = (q @ k.transpose(-1, -2)) / 12**0.5
    i, j = 3, 1
    expect = torch.exp(s[0, 0, i, j]) / (1 + torch.exp(s[0, 0, i, : i + 1]).sum())
    assert torch.allclose(w[0, 0, i, j], expect, rtol=1e-5)
    assert (w[0].sum(-1) < 1).all()


def test_vscale_scales_values_per_head():
    a, b = tiny(vscale=True), tiny(vscale=True)
    with torch.no_grad():
        b.model.layers[0].self_attn.v_scale.fill_(2.0)
        b.model.layers[0].self_attn.v_proj.weight.div_(2.0)  # same function, different parametrisation
    ids = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-5)
    a.train(), b.train()
    a(input_ids=ids, labels=ids).loss.backward()
    b(input_ids=ids, labels=ids).loss.backward()
    ga, gb = a.model.layers[0].self_attn.v_proj.weight.grad, b.model.layers[0].self_attn.v_proj.weight.grad
    assert torch.allclose(gb, 2 * ga, rtol=1e-4, atol=1e-7)  # the gradient reaching v_proj scales with s


def test_profiler_and_quantizer_work_on_the_family():
    tok = make_tokenizer(False)
    m = tiny(gate="head")
    ids = torch.randint(0, 320, (2, 32))
    w = Windows(ids, 32, False, 64, 64, "x", "0")
    p = profile(m, tok, w).to_dict()
    assert len(p["layers"]) == 3 and len(p["attention"]["alpha"][0]) == 4
    ref = m(input_ids=ids).logits
    q = copy.deepcopy(m)
    quantize_(q, get_scheme("w4a4"), "hadamard", w, tok, sqnr=False)
    set_mode(q, "off")
    with torch.no_grad():
        assert float((q(input_ids=ids).logits - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("norm", ["prenorm-rmsnorm", "sandwich", "qknorm", "sandwich-qk", "dyt", "postnorm", "layernorm"])
@pytest.mark.parametrize("handling", ["smoothquant", "hadamard"])
def test_rewrites_preserve_the_function_for_every_norm(norm, handling):
    """SmoothQuant and Hadamard on every normalizer: same logits with quantization off (or a refusal
    with the reason, only for SmoothQuant on post-norm), and the rotation mode the layout allows."""
    tok = make_tokenizer(False)
    m = tiny(norm=norm, gate="head", intermediate_size=80)  # FFN 80 = 20 x 4: a Paley Hadamard size
    with torch.no_grad():  # non-trivial scales and shifts, and one loud channel, so the rewrites have work to do
        for name, p in m.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.uniform_(0.5, 2.0) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
        m.model.embed_tokens.weight[:, 7] *= 30
    ids = torch.randint(0, 320, (2, 32))
    w = Windows(ids, 32, False, 64, 64, "x", "0")
    with torch.no_grad():
        ref = m(input_ids=ids).logits
    q = copy.deepcopy(m)
    if handling == "smoothquant" and norm == "postnorm":
        with pytest.raises(QsinkError, match="smoothquant is not implemented"):
            quantize_(q, get_scheme("w4a4"), handling, w, tok, sqnr=False)
        return
    report = quantize_(q, get_scheme("w4a4"), handling, w, tok, sqnr=False)
    set_mode(q, "off")
    with torch.no_grad():
        got = q(input_ids=ids).logits
    err_off = float((got - ref).abs().max() / ref.abs().max())
    assert err_off < 1e-4
    set_mode(q, "quant")
    with torch.no_grad():
        err_q = float((q(input_ids=ids).logits - ref).abs().max() / ref.abs().max())
    assert err_q > max(1e-4, 10 * err_off)  # and quantization is on
    if handling == "hadamard":
        assert report["handling"]["mode"] == ("residual" if norm in ("prenorm-rmsnorm", "qknorm") else "online")
        if norm not in ("prenorm-rmsnorm", "qknorm"):  # every block linear reads a rotated input
            assert len(report["handling"]["online_linears"]) == 8


@pytest.mark.parametrize("kw, expect", [
    ({"hidden_size": 64, "num_attention_heads": 5}, "hidden_size 64 is not divisible by num_attention_heads 5; use a head count"),
    ({"hidden_size": 48, "num_attention_heads": 16}, "head_dim 3 is odd, but RoPE rotates channel pairs"),
    ({"head_dim": 7}, "head_dim 7 is odd"),
    ({"head_dim": 0}, "head_dim must be at least 2, not 0"),
    ({"hidden_size": 0}, "hidden_size must be at least 1, not 0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be at least 1, not 0"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be at least 1, not 0"),
    ({"intermediate_size": 0}, "intermediate_size must be at least 1, not 0"),
    ({"vocab_size": 0}, "vocab_size must be at least 1, not 0"),
    ({"hidden_size": "64"}, "hidden_size must be a whole number, not '64'"),
    ({"hidden_size": 64.0}, "hidden_size must be a whole number, not 64.0"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a whole number, not True"),
    ({"rope_theta": "big"}, "rope_theta must be a number, not 'big'"),
    ({"rope_theta": 0}, "rope_theta must be more than 0, not 0"),
    ({"norm_eps": -1e-6}, "norm_eps must be at least 0, not -1e-06"),
    ({"vscale": "no"}, "vscale must be true or false, not 'no'"),
    ({"tie_word_embeddings": 1}, "tie_word_embeddings must be true or false, not 1"),
    ({"num_key_value_heads": 2}, "no grouped-query attention"),
    ({"norm": "rms"}, "unknown norm 'rms'; choose from"),
])
def test_config_refuses_what_cannot_build_a_model(kw, expect):
    import re

    with pytest.raises(QsinkError, match=re.escape(expect)):
        QsinkConfig(**{"hidden_size": 48, "num_attention_heads": 4, **kw})


def test_config_head_dim_set_independently_builds_and_round_trips(tmp_path):
    """An explicit (even) head_dim needs no division of the width; the saved config loads back,
    and a saved config edited into an impossible one is refused on load with the same message."""
    import json

    cfg = QsinkConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=5, head_dim=16)
    model = QsinkForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (1, 7))
    model.save_pretrained(tmp_path, safe_serialization=True)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)
    assert QsinkConfig().head_dim == 64 and QsinkConfig(hidden_size=48, num_attention_heads=4).num_key_value_heads == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "head_dim": 15}))
    with pytest.raises(QsinkError, match="head_dim 15 is odd"):
        AutoConfig.from_pretrained(tmp_path)
