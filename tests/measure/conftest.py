"""Fixtures of the measure tests: a BOS tokenizer, its windows, and the constructed sink model.

The planted-spike model lives in ``tests/conftest.py`` because the quantization tests use it too.
"""

import pytest
import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows
from tests.conftest import CONST_CH, D, HEADS, MARKER_CH, SAMPLE_TEXT, make_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def windows(tok):
    return make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31)


def sink_model(tok):
    """Block 0, head 0 attends to the BOS key only; every other head attends uniformly (q = 0)."""
    model = tiny_llama(tok, layers=2)
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
