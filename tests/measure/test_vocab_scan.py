"""The position-0 vocabulary scan on a model whose only spike token is known by construction."""

import pytest

from qsink.measure.vocab_scan import vocab_scan
from tests.conftest import planted_spike_model


def test_only_the_planted_token_spikes(tok):
    model = planted_spike_model(tok, inject_block=1, cancel_block=4)  # h_2..h_4 carry the spike on BOS
    seen = []
    res = vocab_scan(model, tok, layers=[2, 3], batch_size=64, on_batch=seen.append)
    assert res["n_scanned"] == len(tok) and sum(seen) == len(tok)
    assert res["n_spike"] == 1 and res["fraction_spike"] == pytest.approx(1 / len(tok))
    assert res["n_exceptions"] == len(tok) - 1
    assert tok.bos_token_id not in {e["token_id"] for e in res["exceptions"]}
    assert all(not d["spike"] for d in res["delimiters"])  # the marker lives only in BOS's embedding
    none = vocab_scan(model, tok, layers=[5], batch_size=64)  # after the cancelling block: clean again
    assert none["n_spike"] == 0
    sampled = vocab_scan(model, tok, layers=[2], sample=50, seed=1)
    assert sampled["n_scanned"] == 50 and sampled["sampled"]


def test_peak_histogram_counts_every_item(tok):
    model = planted_spike_model(tok, inject_block=1, cancel_block=4)
    res = vocab_scan(model, tok, layers=[2], batch_size=128)
    h = res["peak_histogram"]
    assert sum(h["counts"]) == len(tok) and len(h["edges"]) == len(h["counts"]) + 1
    assert h["counts"][-1] >= 1  # the planted BOS spike (~5000) sits in the top bin
