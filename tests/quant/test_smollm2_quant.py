"""Function preservation on the real SmolLM2-135M (widths 576 = 36 x 16 and 1536 = 12 x 128)."""

import copy

import pytest
import torch

from qsink.data import load_corpus
from qsink.data.windows import make_windows
from qsink.quant import get_scheme, quantize_, set_mode
from qsink.quant.calibration import calibration_windows

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("handling", ["smoothquant", "hadamard"])
def test_rewrites_preserve_logits(smollm2, handling):
    model, tok = smollm2
    ids = make_windows(tok, load_corpus("austen", "test"), ctx=128, max_tokens=128).input_ids
    calib = calibration_windows(tok, load_corpus("austen", "train"), 2, 128)
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w4a4"), handling, calib, tok, sqnr=False)
    set_mode(m, "off")
    with torch.inference_mode():
        got = m(input_ids=ids).logits
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
