"""Cut a text into the fixed-length token windows that perplexity and profiling read.

Convention (recorded in every result): the text is tokenized once without special tokens and cut
into non-overlapping windows of ``ctx`` tokens. If the tokenizer adds a BOS token by default, each
window is ``[BOS] + ctx - 1`` text tokens. The first position of a window is context only, so each
window scores ``ctx - 1`` predictions. A trailing partial window is dropped.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch

from qsink.data.text import Text
from qsink.errors import QsinkError


@dataclass
class Windows:
    input_ids: torch.Tensor  # (n_windows, ctx) int64
    ctx: int
    bos: bool  # whether each window starts with the tokenizer's BOS token
    n_text_tokens: int | None  # tokens in the whole text (None: only a prefix of a large text was read)
    n_used_tokens: int  # text tokens that went into the windows
    data_name: str
    data_sha256: str

    @property
    def n_windows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_scored(self) -> int:
        return self.n_windows * (self.ctx - 1)

    def describe(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "input_ids"}
        d.update(n_windows=self.n_windows, n_scored=self.n_scored)
        return d


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token in front of text by default."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return len(ids) > 0 and ids[0] == bos


def tokens_for(tokenizer, n_windows: int, ctx: int) -> int:
    """How many text tokens ``n_windows`` windows of ``ctx`` hold (one position is BOS if the tokenizer adds it)."""
    return n_windows * (ctx - 1 if adds_bos(tokenizer) else ctx)


def tokenize(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False).input_ids


_MEMO: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
MEMO_SIZE = 4  # texts kept tokenized in this process (a sweep evaluates many cells on the same two texts)


def _fingerprint(tokenizer) -> str | None:
    """A hash of everything a fast tokenizer encodes with (vocabulary, merges, normalizer, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def text_ids(tokenizer, text: Text) -> torch.Tensor:
    """The whole text tokenized (no special tokens), remembered per (tokenizer, content hash) in this
    process: calibrating every cell of a sweep on an 8 MB split otherwise re-tokenizes it each time
    (4.5 s per cell for ``bb:train``). The content is hashed here rather than trusting ``Text.sha256``."""
    fp = _fingerprint(tokenizer)
    key = (fp, hashlib.sha256(text.text.encode()).hexdigest()) if fp else None
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    ids = torch.tensor(tokenize(tokenizer, text.text), dtype=torch.long)
    if key:
        _MEMO[key] = ids
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.popitem(last=False)
    return ids


LARGE_TEXT_CHARS = 4_000_000  # above this, a run that uses only max_tokens tokens tokenizes a prefix
PREFIX_MARGIN = 256  # tokens past max_tokens that a prefix must give, so that where it was cut cannot matter


def prefix_ids(tokenizer, text: str, n_tokens: int) -> torch.Tensor | None:
    """The first ``n_tokens`` tokens of ``text`` from tokenizing a prefix of it, or ``None`` if even the
    whole text gives fewer. Prefixes end at a line break and grow until they give ``PREFIX_MARGIN``
    tokens more than asked for: tokenization is local, so the first ``n_tokens`` equal those of the
    whole text (tested), at a small fraction of the cost for a large file."""
    n_chars = max(1 << 16, 8 * n_tokens)
    while n_chars < len(text):
        cut = text.rfind("\n", 0, n_chars)
        ids = tokenize(tokenizer, text[: cut if cut > 0 else n_chars])
        if len(ids) >= n_tokens + PREFIX_MARGIN:
            return torch.tensor(ids[:n_tokens], dtype=torch.long)
        n_chars *= 2
    return None


def make_windows(tokenizer, text: Text, ctx: int, max_tokens: int | None = None) -> Windows:
    """Tokenize ``text`` once and cut it into windows (see the module docstring). For a text over
    ``LARGE_TEXT_CHARS`` characters and a ``max_tokens`` limit only a prefix is tokenized, and the
    whole text's token count is then unknown (``n_text_tokens`` is ``None``)."""
    if ctx < 2:
        raise QsinkError(f"--ctx {ctx} is too small; a window needs at least 2 tokens")
    ids, n_text = None, None
    if max_tokens and len(text.text) > LARGE_TEXT_CHARS:
        ids = prefix_ids(tokenizer, text.text, max_tokens)
    if ids is None:
        ids = text_ids(tokenizer, text)
        n_text = len(ids)
    bos = adds_bos(tokenizer)
    per_window = ctx - 1 if bos else ctx
    usable = ids[:max_tokens] if max_tokens else ids
    n = len(usable) // per_window
    if n == 0:
        raise QsinkError(
            f"{text.name} gives {len(usable)} tokens, fewer than one window of {ctx}; use a longer text, "
            "a smaller --ctx or a larger --max-tokens"
        )
    body = usable[: n * per_window].clone().view(n, per_window)
    if bos:
        body = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), body], dim=1)
    return Windows(body, ctx, bos, n_text, n * per_window, text.name, text.sha256)
