"""The Bigram-Backcopy language: its two rules hold exactly / statistically, and it is deterministic."""

import numpy as np
import pytest

from qsink.data import resolve_data
from qsink.data.synthetic import BigramBackcopy
from qsink.errors import QsinkError


def test_backcopy_rule_holds_at_every_trigger():
    bb = BigramBackcopy()
    x = bb.sample(50_000, seed=7)
    trig = np.nonzero(x[1:-1] < bb.n_triggers)[0] + 1  # positions i >= 1 holding a trigger
    assert len(trig) > 1000
    assert np.array_equal(x[trig + 1], x[trig - 1])  # the token after a trigger copies the one before it


def test_bigram_rule_matches_the_transition_matrix():
    bb = BigramBackcopy()
    P = bb.transition()
    assert np.allclose(P.sum(1), 1.0)
    x = bb.sample(400_000, seed=3)
    cur, nxt = x[:-1], x[1:]
    for tok in range(bb.n_triggers, bb.n_triggers + 5):  # five ordinary tokens
        m = cur == tok
        freq = np.bincount(nxt[m], minlength=bb.n_tokens) / m.sum()
        tol = 4 * np.sqrt(P[tok] * (1 - P[tok]) / m.sum()) + 1e-3  # 4 binomial standard errors
        assert (np.abs(freq - P[tok]) <= tol).all()


def test_splits_are_deterministic_and_distinct():
    a, b = resolve_data("bb:validation", None), resolve_data("bb:validation", None)
    assert a.sha256 == b.sha256 and a.name == "bb:validation"
    assert resolve_data("bb:test", None).sha256 != a.sha256
    assert set(a.text.split()) <= set(BigramBackcopy().vocabulary())
    assert np.array_equal(BigramBackcopy().sample(1000, 5), BigramBackcopy().sample(1000, 5))
    with pytest.raises(QsinkError, match="no split 'dev'.*train, validation, test"):
        resolve_data("bb:dev", None)


def test_word_tokenizer_maps_each_word_to_one_id(qsink_home):
    from qsink.train.tokenizer import train_tokenizer

    text = resolve_data("bb:validation", None)
    tok = train_tokenizer([text], vocab_size=0, log=lambda m: None, kind="word")
    assert len(tok) == 64 + 2
    words = text.text.split()[:50]
    ids = tok(" ".join(words)).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == 51
    assert tok.convert_ids_to_tokens(ids[1:]) == words
    with pytest.raises(QsinkError, match="unknown tokenizer 'char'"):
        train_tokenizer([text], 0, kind="char")
