import pytest
import torch

from qsink.data.text import Text
from qsink.data import windows as windows_mod
from qsink.data.windows import adds_bos, make_windows, tokenize
from qsink.errors import QsinkError
from tests.conftest import SAMPLE_TEXT, make_tokenizer

TEXT = Text("sample", SAMPLE_TEXT, "0" * 64)


@pytest.mark.parametrize("add_bos", [False, True])
def test_windows_are_non_overlapping_slices_of_one_tokenization(add_bos):
    tok = make_tokenizer(add_bos)
    assert adds_bos(tok) is add_bos
    ids = tokenize(tok, SAMPLE_TEXT)
    w = make_windows(tok, TEXT, ctx=16)
    per = 15 if add_bos else 16
    assert w.n_windows == len(ids) // per
    assert w.input_ids.shape == (w.n_windows, 16)
    body = w.input_ids[:, 1:] if add_bos else w.input_ids
    assert body.flatten().tolist() == ids[: w.n_windows * per]
    if add_bos:
        assert (w.input_ids[:, 0] == tok.bos_token_id).all()
    assert w.n_scored == w.n_windows * 15


def test_max_tokens_limits_the_text_used():
    tok = make_tokenizer(False)
    w = make_windows(tok, TEXT, ctx=16, max_tokens=50)
    assert w.n_windows == 3 and w.n_used_tokens == 48
    assert w.describe()["n_windows"] == 3


def test_too_short_text_and_tiny_ctx_are_errors():
    tok = make_tokenizer(False)
    with pytest.raises(QsinkError, match="fewer than one window"):
        make_windows(tok, Text("short", "a b", "0"), ctx=64)
    with pytest.raises(QsinkError, match="too small"):
        make_windows(tok, TEXT, ctx=1)


def test_tokenization_is_remembered_per_tokenizer_and_content(monkeypatch):
    calls = []
    real = windows_mod.tokenize
    monkeypatch.setattr(windows_mod, "tokenize", lambda tok, text: calls.append(text) or real(tok, text))
    windows_mod._MEMO.clear()
    tok, tok_bos = make_tokenizer(False), make_tokenizer(True)
    a = make_windows(tok, TEXT, ctx=16)
    b = make_windows(make_tokenizer(False), TEXT, ctx=16)  # a fresh, identical tokenizer: remembered
    assert len(calls) == 1 and torch.equal(a.input_ids, b.input_ids)
    a.input_ids[0, 0] = -1  # windows are copies: editing one cannot reach the remembered ids
    assert make_windows(tok, TEXT, ctx=16).input_ids[0, 0] != -1
    other = Text("other", SAMPLE_TEXT[::-1], TEXT.sha256)  # same declared sha256, different content
    assert not torch.equal(make_windows(tok, other, ctx=16).input_ids, b.input_ids) and len(calls) == 2
    w = make_windows(tok_bos, TEXT, ctx=16)  # another tokenizer (adds BOS): its own entry
    assert len(calls) == 3 and w.input_ids[:, 1:].flatten().tolist() == real(tok_bos, SAMPLE_TEXT)[: w.n_windows * 15]


def _mixed_text(n_lines: int) -> str:
    """Lines of varied prose, digits, punctuation and non-ASCII, so that cuts meet every kind of token."""
    words = SAMPLE_TEXT.split()
    return "\n".join(f"{i}. « {' '.join(words[i % 50: i % 50 + 7])} » — naïve café {i * 37 % 1000}!" + ("\n" if i % 9 == 0 else "")
                     for i in range(n_lines))


@pytest.mark.parametrize("n_tokens", [100, 1000, 5000])
def test_a_prefix_gives_the_same_tokens_as_the_whole_text(n_tokens):
    tok = make_tokenizer(False)
    text = _mixed_text(4000)
    whole = tokenize(tok, text)
    assert len(whole) > n_tokens + 1000
    prefix = windows_mod.prefix_ids(tok, text, n_tokens)
    assert prefix.tolist() == whole[:n_tokens]
    assert windows_mod.prefix_ids(tok, text, len(whole)) is None  # the text cannot give that many plus the margin


def test_a_prefix_gives_the_same_tokens_with_a_real_tokenizer(smollm2):
    _, tok = smollm2
    text = _mixed_text(3000)
    whole = tokenize(tok, text)
    for n in (512, 4096):
        assert windows_mod.prefix_ids(tok, text, n).tolist() == whole[:n]


def test_a_large_text_with_max_tokens_is_read_as_a_prefix(monkeypatch):
    """The windows are those of the whole text; only a prefix is tokenized (the full count is then unknown)."""
    tok = make_tokenizer(True)
    text = Text("big", _mixed_text(4000), "1" * 64)
    full = make_windows(tok, text, ctx=32, max_tokens=2000)
    calls = []
    real = windows_mod.tokenize
    monkeypatch.setattr(windows_mod, "tokenize", lambda t, s: calls.append(len(s)) or real(t, s))
    monkeypatch.setattr(windows_mod, "LARGE_TEXT_CHARS", 10_000)
    part = make_windows(tok, text, ctx=32, max_tokens=2000)
    assert torch.equal(part.input_ids, full.input_ids)
    assert part.n_used_tokens == full.n_used_tokens and part.n_text_tokens is None
    assert full.n_text_tokens > 10_000
    assert calls and max(calls) < len(text.text) / 2
