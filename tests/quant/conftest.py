"""Fixtures of the quantization tests (tests/quant and tests/quant/handling): a tiny Llama whose
rewrites have work to do, its tokenizer, evaluation windows and calibration windows."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.text import Text
from qsink.data.windows import make_windows
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
