"""The Hadamard rotation directly: the fp function is unchanged in both modes (residual rotation
folded into weights; online rotation of every linear's input where the layout cannot fold it),
the folded weights are an orthogonal change of basis, and an impossible width is refused before any
weight is touched."""

import copy

import pytest
import torch
import transformers

from qsink.errors import QsinkError
from qsink.quant import get_scheme, quantize_, set_mode
from qsink.quant.qlinear import QLinear
from tests.quant.conftest import logits


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_function_preservation_with_quantization_off(model, tok, windows, calib):
    ref = logits(model, windows.input_ids)
    m = copy.deepcopy(model)
    report = quantize_(m, get_scheme("w4a4"), "hadamard", calib, tok, sqnr=False)
    assert report["handling"] == {"name": "hadamard", "mode": "residual", "seed": 0, "online_down_proj": True}
    set_mode(m, "off")
    assert rel(logits(m, windows.input_ids), ref) < 1e-4
    set_mode(m, "quant")
    assert rel(logits(m, windows.input_ids), ref) > 1e-3  # and quantization is on


def test_residual_rotation_is_an_orthogonal_change_of_basis(model, tok, windows, calib):
    """Norm scales are fused (every norm weight becomes 1), the embedding rows are rotated (their Gram
    matrix is unchanged, the rows themselves are not), tied lm_head is untied, only down_proj is
    rotated online, and the rotated model with quantization off computes the same logits."""
    m = copy.deepcopy(model)
    assert m.lm_head.weight is m.model.embed_tokens.weight  # the fixture ties them
    quantize_(m, get_scheme("w8a8"), "hadamard", calib, tok, sqnr=False)
    set_mode(m, "off")
    norms = [m.model.norm] + [n for b in m.model.layers for n in (b.input_layernorm, b.post_attention_layernorm)]
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)
    E0, E1 = model.model.embed_tokens.weight.double(), m.model.embed_tokens.weight.double()
    assert torch.allclose(E1 @ E1.T, E0 @ E0.T, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(E1, E0, atol=1e-3)
    assert m.lm_head.weight is not m.model.embed_tokens.weight
    online = {name for name, mod in m.named_modules() if isinstance(mod, QLinear) and mod.input_transform is not None}
    assert online == {f"model.layers.{l}.mlp.down_proj" for l in range(2)}
    assert rel(logits(m, windows.input_ids), logits(model, windows.input_ids)) < 1e-4


def test_online_mode_where_the_residual_cannot_be_rotated(tok):
    """GPT-NeoX (LayerNorm, parallel blocks): every block linear's input is rotated at run time."""
    from qsink.data.text import Text
    from qsink.data.windows import make_windows
    from tests.conftest import SAMPLE_TEXT

    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.5)).eval()
    w = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=2 * 32)
    ref = logits(model, w.input_ids)
    m = copy.deepcopy(model)
    report = quantize_(m, get_scheme("w4a4"), "hadamard", None, tok, sqnr=False)
    linears = ["attention.dense", "attention.query_key_value", "mlp.dense_4h_to_h", "mlp.dense_h_to_4h"]
    assert report["handling"] == {"name": "hadamard", "mode": "online", "online_linears": linears}
    assert all(m.gpt_neox.layers[l].get_submodule(n).input_transform is not None for l in range(2) for n in linears)
    set_mode(m, "off")
    assert rel(logits(m, w.input_ids), ref) < 1e-4
    set_mode(m, "quant")
    assert rel(logits(m, w.input_ids), ref) > 1e-3


def test_an_impossible_width_is_refused_before_any_weight_changes(tok, calib):
    """92 = 4 x 23 has no Paley factor here (91, 45, 22 are not primes of the right kind)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=92, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QsinkError, match="no Hadamard matrix of order 92"):
        quantize_(model, get_scheme("w4a4"), "hadamard", calib, tok, sqnr=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(mod, QLinear) for mod in model.modules())
