"""The Fisher prediction of the KL divergence a quantization causes matches the measured KL divergence
where the second-order expansion holds (small errors), for weights and for activations, and leaves
the model as it was."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.evaluate.sensitivity import fisher_sensitivity, measured_kld
from qsink.quant import quantize_
from qsink.quant.mixture import act_format, weight_format
from qsink.quant.schemes import Scheme
from tests.conftest import SAMPLE_TEXT, make_tokenizer
from tests.evaluate.test_advise import _kld


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer(add_bos=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)
    model = LlamaForCausalLM(cfg).eval()
    return tok, model, make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=8 * 32)


@pytest.mark.parametrize("weight,act,part", [("int8", None, "weight"), ("int6-g128", None, "weight"),
                                             (None, "int8", "act")])
def test_the_prediction_matches_the_measured_kld_for_small_errors(tiny, weight, act, part):
    tok, model, windows = tiny
    q = copy.deepcopy(model)
    scheme = Scheme("t", "t", weight_format(weight) if weight else None, act_format(act))
    quantize_(q, scheme, "none", None, tok, sqnr=False)
    logits_before = q(input_ids=windows.input_ids).logits
    sens = fisher_sensitivity(q, windows, seed=0)
    assert torch.equal(q(input_ids=windows.input_ids).logits, logits_before)  # quantized again after the pass
    assert all(p.grad is None and p.requires_grad for p in q.parameters())
    predicted = sum(v[part] for v in sens.values())
    other = "act" if part == "weight" else "weight"
    assert sum(v[other] for v in sens.values()) == 0  # the part that is not quantized predicts nothing
    measured = _kld(model, q, windows)  # the test's own KL divergence
    assert measured == pytest.approx(measured_kld(model, q, windows), rel=1e-4)
    assert predicted == pytest.approx(measured, rel=0.35), (predicted, measured)
