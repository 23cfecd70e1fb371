"""The quantization engine end to end on tiny real models: function preservation, every
scheme x handling combination, and known answers for the individual mechanisms."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.corpora import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate.perplexity import perplexity
from qsink.quant import HANDLERS, SCHEMES, check_combination, get_scheme, quantize_, set_mode
from qsink.quant.qlinear import QLinear, QuantContext
from qsink.quant.schemes import QuantFormat, PER_TOKEN
from tests.conftest import SAMPLE_TEXT, make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=False)


@pytest.fixture(scope="module")
def model(tok):
    """Width 48 = 12 x 4 and FFN 80 = 20 x 4: Hadamard sizes that are not powers of two; GQA; tied embeddings."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales and one loud channel, so the rewrites have work to do
        for block in m.model.layers:
            block.input_layernorm.weight.uniform_(0.5, 2.0)
            block.post_attention_layernorm.weight.uniform_(0.5, 2.0)
        m.model.norm.weight.uniform_(0.5, 2.0)
        m.model.embed_tokens.weight[:, 7] *= 30
    return m


@pytest.fixture(scope="module")
def windows(tok):
    return make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 32)


@pytest.fixture(scope="module")
def calib(tok):
    return make_windows(tok, Text("c", SAMPLE_TEXT[::-1], "0"), ctx=32, max_tokens=3 * 32)


def logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.mark.parametrize("handling", ["smoothquant", "hadamard"])
def test_function_preservation_with_quantization_off(model, tok, windows, calib, handling):
    ref = logits(model, windows.input_ids)
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w4a4"), handling, calib, tok, sqnr=False)
    set_mode(m, "off")
    got = logits(m, windows.input_ids)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4
    set_mode(m, "quant")
    assert float((logits(m, windows.input_ids) - ref).abs().max() / ref.abs().max()) > 1e-3  # and quantization is on


def _combinations():
    for scheme in SCHEMES.names():
        for handling in HANDLERS.names():
            yield scheme, handling


@pytest.mark.parametrize("scheme, handling", list(_combinations()))
def test_every_combination_runs_or_is_refused_before_compute(model, tok, windows, calib, scheme, handling):
    s = get_scheme(scheme)
    try:
        check_combination(s, handling)
    except QsinkError as e:
        assert str(e)  # refused with a reason; nothing was computed
        return
    m = copy.deepcopy(model)
    report = quantize_(m, s, handling, calib, tok)
    res = perplexity(m, tok, windows)
    assert res.ppl > 1 and res.ppl == res.ppl
    assert report["n_linears"] == 2 * 7
    assert report["handling"]["name"] == handling
    assert all(isinstance(mod, QLinear) for name, mod in m.named_modules() if name.endswith("_proj"))
    assert not isinstance(m.lm_head, QLinear)
    if s.weight or s.act:
        assert report["sqnr_db_mean"] is not None and report["sqnr_db_mean"] < 200


def test_refusals_name_the_reason():
    with pytest.raises(QsinkError, match="quantizes no activations"):
        check_combination(get_scheme("w4a16"), "smoothquant")
    with pytest.raises(QsinkError, match="int8 activation"):
        check_combination(get_scheme("w4a4"), "llm-int8")
    with pytest.raises(QsinkError, match="integer scales"):
        check_combination(get_scheme("mxfp4"), "clip")
    with pytest.raises(QsinkError, match="nothing to protect"):
        check_combination(get_scheme("fp"), "hadamard")
    with pytest.raises(QsinkError, match="Did you mean 'hadamard'"):
        check_combination(get_scheme("w4a4"), "hadamrd")


def test_sqnr_orders_bit_widths(model, tok, calib):
    r8 = quantize_(copy.deepcopy(model), get_scheme("w8a8"), "none", calib, tok)
    r4 = quantize_(copy.deepcopy(model), get_scheme("w4a4"), "none", calib, tok)
    assert r8["sqnr_db_mean"] > r4["sqnr_db_mean"] + 10  # ~6 dB per bit on weights and activations


def test_static_scales_come_from_calibration(model, tok, calib):
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w8a8-static"), "none", calib, tok, sqnr=False)
    q = m.model.layers[0].self_attn.q_proj
    # the input of q_proj is the first norm's output: compute its absmax directly
    seen = []
    h = m.model.layers[0].input_layernorm.register_forward_hook(lambda mod, i, o: seen.append(o.abs().max()))
    set_mode(m, "off")
    logits(m, calib.input_ids)
    h.remove()
    assert float(q.act_scale) == pytest.approx(float(max(seen)) / 127, rel=1e-6)
    assert "static" in repr(q) and "a=int8 per-tensor" in repr(q)


def test_llm_int8_threshold_extremes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(2, 5, 16)
    x[..., 3] *= 50
    s = get_scheme("w8a8")

    def out(threshold):
        q = QLinear.from_float(lin, "t", QuantContext(), s.weight, s.act, outlier_threshold=threshold)
        return q(x), q

    y0, _ = out(0.0)  # every column is an outlier: the layer is fp
    assert torch.allclose(y0, lin(x), atol=1e-6)
    yinf, _ = out(float("inf"))  # no outliers: plain w8a8
    plain = QLinear.from_float(lin, "t", QuantContext(), s.weight, s.act)(x)
    assert torch.equal(yinf, plain)
    y6, q6 = out(6.0)
    assert q6.outlier_columns_seen == 1
    assert (y6 - lin(x)).abs().max() < (plain - lin(x)).abs().max()


def test_token_keep_rows_are_not_quantized():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(1, 6, 16)
    ctx = QuantContext()
    s = get_scheme("w4a4")
    q = QLinear.from_float(lin, "t", ctx, s.weight, s.act)
    ctx.keep_mask = torch.tensor([[True, False, False, False, False, True]])
    y = q(x)
    exact = torch.nn.functional.linear(x, q.weight_q, lin.bias)
    assert torch.allclose(y[0, [0, 5]], exact[0, [0, 5]], atol=1e-6)
    assert not torch.allclose(y[0, 1:5], exact[0, 1:5], atol=1e-4)


def test_token_keep_finds_spike_positions(tok, calib):
    from tests.measure.test_profiler import planted_spike_model

    btok = make_tokenizer(add_bos=True)
    m = planted_spike_model(btok, 1, 4)
    cw = make_windows(btok, Text("c", SAMPLE_TEXT, "0"), ctx=32, max_tokens=3 * 31)
    report = quantize_(m, get_scheme("w8a8-static"), "token-keep", cw, btok)
    assert report["handling"]["positions"] == [0]
    perplexity(m, btok, cw)
    from qsink.quant.apply import kept_token_fraction

    kept = kept_token_fraction(m)
    assert kept["kept_tokens"] == cw.n_windows and kept["fraction"] == pytest.approx(1 / 32)


def test_clip_never_worse_than_no_clip_on_calibration_rows(model, tok, calib):
    m = copy.deepcopy(model)
    report = quantize_(m, get_scheme("w4a4"), "clip", calib, tok)
    assert 0.4 <= report["handling"]["weight_ratio_min"] <= 1.0
    plain = quantize_(copy.deepcopy(model), get_scheme("w4a4"), "none", calib, tok)
    assert report["sqnr_db_mean"] >= plain["sqnr_db_mean"] - 0.5


def test_kv_quantization(model, tok, windows, calib):
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w8a8+kv4"), "none", calib, tok)
    k = m.model.layers[0].self_attn.k_proj
    assert k.out_fmt is not None and "out=int4 group12" in repr(k)
    assert m.model.layers[0].self_attn.q_proj.out_fmt is None
    assert perplexity(m, tok, windows).ppl > 1
    with pytest.raises(QsinkError, match="bad KV suffix"):
        get_scheme("w8a8+kvx")


def test_scheme_validation():
    with pytest.raises(ValueError, match="blocks of 32"):
        QuantFormat("mxfp4", 4, True, PER_TOKEN)
    with pytest.raises(ValueError, match="2 to 8 bits"):
        QuantFormat("int", 1)


def test_lm_head_and_embedding_can_be_included(model, tok, windows, calib):
    m = copy.deepcopy(model)
    emb_before = m.model.embed_tokens.weight.detach().clone()
    report = quantize_(m, get_scheme("w4a4"), "none", calib, tok, include=("lm_head", "embed"))
    assert isinstance(m.lm_head, QLinear) and report["n_linears"] == 2 * 7 + 1
    assert not torch.equal(m.model.embed_tokens.weight, emb_before)
    assert m.model.embed_tokens.weight.unique().numel() < emb_before.unique().numel()
    assert perplexity(m, tok, windows).ppl > 1
    plain = copy.deepcopy(model)
    quantize_(plain, get_scheme("w4a4"), "none", calib, tok)
    assert torch.equal(plain.model.embed_tokens.weight, model.model.embed_tokens.weight)
    with pytest.raises(QsinkError, match="cannot include"):
        quantize_(copy.deepcopy(model), get_scheme("w4a4"), "none", calib, tok, include=("norms",))


def test_quarot_is_the_rotation_then_gptq(model, tok, windows, calib):
    """Same function with quantization off; on calibration inputs GPTQ's rotated weights beat the
    rotated round-to-nearest ones (the objective GPTQ minimises), so the mean SQNR rises."""
    ref = logits(model, windows.input_ids)
    rtn, qr = copy.deepcopy(model), copy.deepcopy(model)
    r_rtn = quantize_(rtn, get_scheme("w4a16"), "hadamard", calib, tok)
    r_qr = quantize_(qr, get_scheme("w4a16"), "quarot", calib, tok)
    set_mode(qr, "off")
    assert float((logits(qr, windows.input_ids) - ref).abs().max() / ref.abs().max()) < 1e-4
    assert r_qr["handling"]["gptq"]["n_linears"] == 14 and r_qr["handling"]["rotation"]["mode"] == "residual"
    assert r_qr["sqnr_db_mean"] > r_rtn["sqnr_db_mean"] + 0.5
    with pytest.raises(QsinkError, match="integer weights"):
        check_combination(get_scheme("mxfp4"), "quarot")
