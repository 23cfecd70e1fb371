"""Batched perplexity against a straightforward one-window-at-a-time computation."""

import math

import pytest
import torch

from qsink.data.corpora import Text
from qsink.data.windows import make_windows
from qsink.evaluate.perplexity import perplexity
from qsink.models import load
from tests.conftest import SAMPLE_TEXT


def reference_nll_sum(model, windows):
    """Transformers' own shifted-label loss, one window at a time, times the tokens it scores."""
    total = 0.0
    with torch.no_grad():
        for w in windows.input_ids:
            out = model(input_ids=w[None], labels=w[None])
            total += float(out.loss) * (w.numel() - 1)
    return total


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_bos_model_dir"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_matches_reference(request, fixture, batch_size):
    model, tok = load(str(request.getfixturevalue(fixture)), log=lambda m: None)
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=400)
    res = perplexity(model, tok, windows, batch_size=batch_size)
    ref = reference_nll_sum(model, windows)
    assert res.n_scored == windows.n_windows * 31
    assert res.nll_sum == pytest.approx(ref, rel=1e-4)
    assert res.ppl == pytest.approx(math.exp(ref / res.n_scored), rel=1e-4)
    assert res.bpb == pytest.approx(ref / math.log(2) / res.n_bytes, rel=1e-4)


def test_bytes_count_the_scored_text(tiny_model_dir):
    model, tok = load(str(tiny_model_dir), log=lambda m: None)
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=400)
    res = perplexity(model, tok, windows)
    # every window's first token is context only; the rest decode back to text bytes
    full = sum(len(tok.decode(w.tolist()).encode()) for w in windows.input_ids)
    assert 0 < res.n_bytes < full


def test_non_finite_loss_is_reported(tiny_model_dir):
    from qsink.errors import QsinkError

    model, tok = load(str(tiny_model_dir), log=lambda m: None)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=100)
    with pytest.raises(QsinkError, match="non-finite loss on window 0"):
        perplexity(model, tok, windows)
