"""The Bigram-Backcopy task: a synthetic language in which very small transformers grow sinks.

Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token
Phenomena in LLMs" (arXiv 2410.13835), show that one- to three-layer transformers trained on this
task develop attention sinks on the first token, small value states there and a residual-state
peak, the same extreme-token phenomena as large LLMs, within minutes. qsink uses it as a labelled
*synthetic testbed* for the model variants, next to (never instead of) real text.

The language (our parametrisation; the paper estimates its bigram table from real text instead):

* ``n_tokens`` ordinary tokens, written ``w00 w01 ...`` and separated by spaces, so that a
  word-level tokenizer maps each to one id;
* a fixed bigram transition matrix, one Dirichlet(``alpha``) row per token, drawn from ``seed``;
* the first ``n_triggers`` tokens are triggers: the token after a trigger copies the token just
  *before* the trigger (the "backcopy"); every other next token is drawn from the bigram row of the
  current token.

A head that implements the copy must fire on trigger positions and do nothing elsewhere, which is
the active-dormant behaviour that makes the first token a sink. Splits are independent streams of
the same language (``train`` 2M tokens, ``validation`` and ``test`` 100k), generated on demand
and deterministic; ``bb:SPLIT`` in any ``--data`` option reads them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from qsink.files import sha256_text
from qsink.data.text import Text
from qsink.errors import QsinkError

SPLIT_TOKENS = {"train": 2_000_000, "validation": 100_000, "test": 100_000}
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


@dataclass(frozen=True)
class BigramBackcopy:
    n_tokens: int = 64
    n_triggers: int = 3
    alpha: float = 0.1  # Dirichlet concentration of each bigram row: small -> peaked rows
    seed: int = 0

    def word(self, i: int) -> str:
        return f"w{i:02d}"

    def vocabulary(self) -> list[str]:
        return [self.word(i) for i in range(self.n_tokens)]

    def transition(self) -> np.ndarray:
        """(n_tokens, n_tokens) row-stochastic bigram matrix."""
        rng = np.random.default_rng(self.seed)
        return rng.dirichlet(np.full(self.n_tokens, self.alpha), size=self.n_tokens)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` tokens of one stream; the first is uniform, the rest follow the rules above."""
        rng = np.random.default_rng([self.seed, seed])
        cdf = np.cumsum(self.transition(), axis=1)
        cdf[:, -1] = 1.0
        rows = cdf.tolist()  # plain lists: bisect on them is ~10x faster than numpy per scalar
        u = rng.random(n).tolist()
        out = [int(u[0] * self.n_tokens)]
        prev, K = out[0], self.n_triggers  # the token before the current one (the first copies itself)
        for i in range(1, n):
            cur = out[-1]
            out.append(prev if cur < K else bisect.bisect_right(rows[cur], u[i]))
            prev = cur
        return np.asarray(out, dtype=np.int64)

    def text(self, n: int, seed: int) -> str:
        words = self.vocabulary()
        return " ".join(words[i] for i in self.sample(n, seed))

    def copy_targets(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask over positions whose *next* token is a backcopy (the current one is a trigger)."""
        return np.asarray(ids) < self.n_triggers


SYNTHETIC = {"bb": BigramBackcopy()}


def load_synthetic(name: str, split: str | None):
    """``bb[:SPLIT]`` as a :class:`qsink.data.Text` (default split: test)."""
    split = split or "test"
    if split not in SPLIT_TOKENS:
        raise QsinkError(f"synthetic data {name!r} has no split {split!r}; it has {', '.join(SPLIT_TOKENS)}")
    text = _text(name, split)
    return Text(f"{name}:{split}", text, sha256_text(text))


@lru_cache(maxsize=8)
def _text(name: str, split: str) -> str:
    return SYNTHETIC[name].text(SPLIT_TOKENS[split], SPLIT_SEEDS[split])
