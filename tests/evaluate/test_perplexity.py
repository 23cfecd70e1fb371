"""Batched perplexity against a straightforward one-window-at-a-time computation."""

import math

import pytest
import torch

from qsink.data.text import Text
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


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table (what a ByteLevel BPE vocabulary is written in), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_bos_model_dir"])
def test_bytes_count_the_scored_text(request, fixture):
    """ASCII text: the scored tokens of a window are a contiguous slice of the original text (from the
    tokenizer's character offsets), so n_bytes is the byte length of those slices, exactly."""
    model, tok = load(str(request.getfixturevalue(fixture)), log=lambda m: None)
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=400)
    enc = tok(SAMPLE_TEXT, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.offset_mapping
    bos = fixture == "tiny_bos_model_dir"
    per_window = 31 if bos else 32
    expected = 0
    for i, w in enumerate(windows.input_ids):
        first, last = i * per_window + (0 if bos else 1), (i + 1) * per_window - 1  # text-token indices scored
        assert w[1:].tolist() == enc.input_ids[first : last + 1]
        expected += len(SAMPLE_TEXT[offsets[first][0] : offsets[last][1]].encode("utf-8"))
    res = perplexity(model, tok, windows)
    assert res.n_bytes == expected
    if bos:  # every text token is scored: the bytes are the whole covered prefix of the text
        assert expected == len(SAMPLE_TEXT[: offsets[windows.n_used_tokens - 1][1]].encode("utf-8"))


def test_bytes_decode_window_by_window(tiny_model_dir):
    """Multi-byte characters cut by a window boundary: each window's scored tokens are decoded on
    their own (the module's convention), so a cut character becomes U+FFFD (3 bytes) in that window.
    The expected count is built from the vocabulary's bytes, not from the tokenizer's decode."""
    model, tok = load(str(tiny_model_dir), log=lambda m: None)
    text = "café naïve — “quoted” 日本語 😀, ünïcödé " * 20
    windows = make_windows(tok, Text("u", text, "0"), ctx=32, max_tokens=8 * 32)
    table = byte_level_decoder()
    expected, raw = 0, 0
    for w in windows.input_ids:
        data = b"".join(bytes(table[ch] for ch in tok.convert_ids_to_tokens(int(t))) for t in w[1:])
        raw += len(data)
        expected += len(data.decode("utf-8", errors="replace").encode("utf-8"))
    assert expected != raw  # some window boundary does cut a character
    assert perplexity(model, tok, windows).n_bytes == expected


def test_non_finite_loss_is_reported(tiny_model_dir):
    from qsink.errors import QsinkError

    model, tok = load(str(tiny_model_dir), log=lambda m: None)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=100)
    with pytest.raises(QsinkError, match="non-finite loss on window 0"):
        perplexity(model, tok, windows)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_large_head_in_chunks_gives_the_full_computation(family, monkeypatch):
    """The chunked head (for vocabularies whose logits would not fit) equals the full forward's NLL,
    Gemma 2's final logit soft-capping included."""
    from qsink.evaluate import perplexity as ppl_mod
    from tests.conftest import SAMPLE_TEXT, make_tokenizer, tiny_gemma3, tiny_llama

    tok = make_tokenizer(add_bos=True)
    model = tiny_llama(tok) if family == "llama" else tiny_gemma3(tok)
    if family == "gemma3":
        model.config.final_logit_softcapping = 3.0  # small, so the cap changes the logits
    ids = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=3 * 31).input_ids
    with torch.inference_mode():
        full = ppl_mod.window_nll(model, ids)
        monkeypatch.setattr(ppl_mod, "LOGIT_BYTES", 4 * len(tok) * 7)  # 7 positions per chunk
        chunked = ppl_mod.window_nll(model, ids)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
