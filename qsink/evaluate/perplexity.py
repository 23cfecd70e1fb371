"""Token-level perplexity and bits per byte over fixed windows.

Perplexity is ``exp(mean NLL)`` over every scored token (the convention of the quantization
papers, e.g. GPTQ and SmoothQuant), not lm-eval's word perplexity. Bits per byte is the summed NLL
in bits divided by the UTF-8 bytes of the scored tokens' text (decoded window by window).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from qsink.data.windows import Windows
from qsink.errors import QsinkError
from qsink.models.adapter import text_config


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean NLL per scored token, nats
    bpb: float  # bits per UTF-8 byte
    nll_sum: float
    n_scored: int
    n_bytes: int
    wall_s: float
    tokens_per_s: float  # scored + context tokens through the model per second

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def scored_bytes(tokenizer, windows: Windows) -> int:
    return sum(
        len(tokenizer.decode(w[1:].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False).encode("utf-8"))
        for w in windows.input_ids
    )


LOGIT_BYTES = 512 << 20  # fp32 logits one pass may hold; above this the head runs in chunks of positions


def logit_chunks(model, input_ids: torch.Tensor):
    """The fp32 logits of each window's positions 0..T-2 (the predictions of tokens 1..T-1), as
    ``(row, logits)`` pairs over the flattened (window, position) rows of the batch, at most
    :data:`LOGIT_BYTES` at a time.

    When the logits of a whole batch fit (SmolLM2, 4 windows of 512: 400 MB) they come from one
    forward, one window's rows at a time (each a contiguous slice: no copy of the batch's logits);
    otherwise (Gemma 3's 262,144-token head: 2.1 GB for 4 windows of 512) the base model
    runs once and the head over chunks of rows, so peak memory stays bounded; the numbers are the
    same computation (tested against the full path).
    """
    B, T = input_ids.shape
    V = model.get_output_embeddings().weight.shape[0]
    if B * (T - 1) * V * 4 <= LOGIT_BYTES:
        logits = model(input_ids=input_ids, use_cache=False).logits
        for b in range(B):
            yield b * (T - 1), logits[b, :-1].float()
        return
    flat = base_hidden(model, input_ids)[:, :-1].reshape(B * (T - 1), -1)
    rows = max(1, LOGIT_BYTES // (4 * V))
    for i in range(0, flat.shape[0], rows):
        yield i, head_logits(model, flat[i : i + rows])


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits from the base model's last hidden state, as the model's forward makes them
    (Gemma 2's tanh soft-capping included)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def base_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The base model's last hidden state (after the final norm), what the head reads: (B, T, D)."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def window_nll(model, input_ids: torch.Tensor, on_chunk: Callable | None = None) -> torch.Tensor:
    """Summed NLL of each window's predictions of positions 1..T-1, shape (B,), float64.

    ``logsumexp - target logit`` in fp32 agrees with a float64 log-softmax to ~1e-8 here, while
    ``F.cross_entropy`` on the (B, V, T) layout drifted by ~1e-4 nats per token on SmolLM2.
    ``on_chunk(row, logits, targets, nll, lse)`` sees each chunk of :func:`logit_chunks` on the way.
    """
    B, T = input_ids.shape
    targets = input_ids[:, 1:].reshape(-1)
    parts = []
    for i, logits in logit_chunks(model, input_ids):
        t = targets[i : i + logits.shape[0]]
        lse = torch.logsumexp(logits, dim=-1)
        nll = lse - logits.gather(-1, t[:, None]).squeeze(-1)
        parts.append(nll)
        if on_chunk is not None:
            on_chunk(i, logits, t, nll, lse)
    return torch.cat(parts).view(B, T - 1).double().sum(dim=1)


class Observer:
    """Reads the logits of a perplexity pass as they go by (the agreement statistics, the fp
    reference); never holds more than one chunk. ``rows`` count scored positions over the whole
    run: window ``w``'s position ``t`` (predicting token ``t + 1``) is row ``w * (ctx - 1) + t``."""

    def attach(self, model):  # a context manager around the whole pass (hooks, say)
        return contextlib.nullcontext()

    def begin_batch(self, row0: int, input_ids: torch.Tensor) -> None:
        """Called before each batch's forward (rows from ``row0`` on)."""

    def chunk(self, row: int, logits: torch.Tensor, targets: torch.Tensor, nll: torch.Tensor,
              lse: torch.Tensor) -> None:
        """One chunk: fp32 logits (n, V), the correct tokens (n,), their NLL and the rows' logsumexp (n,)."""
        raise NotImplementedError


@torch.inference_mode()
def perplexity(
    model,
    tokenizer,
    windows: Windows,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    observers: Sequence[Observer] = (),
) -> PerplexityResult:
    """Perplexity of ``model`` over ``windows``, ``batch_size`` windows per forward; each chunk of
    logits is also handed to every observer.

    Example:
        >>> res = perplexity(model, tok, make_windows(tok, text, ctx=512))  # doctest: +SKIP
        >>> round(res.ppl, 2)                                               # doctest: +SKIP
    """
    device = next(model.parameters()).device
    ids = windows.input_ids
    t0 = time.perf_counter()
    total = 0.0
    with contextlib.ExitStack() as stack:
        for ob in observers:
            stack.enter_context(ob.attach(model))
        for start in range(0, windows.n_windows, batch_size):
            batch = ids[start : start + batch_size].to(device)
            total += _batch_nll(model, batch, start * (windows.ctx - 1), observers, windows.data_name, start)
            if on_batch:
                on_batch(int(batch.shape[0]))
    wall = time.perf_counter() - t0
    n = windows.n_scored
    n_bytes = scored_bytes(tokenizer, windows)
    return PerplexityResult(
        ppl=math.exp(total / n), nll=total / n, bpb=total / math.log(2) / max(n_bytes, 1), nll_sum=total,
        n_scored=n, n_bytes=n_bytes, wall_s=wall, tokens_per_s=windows.n_windows * windows.ctx / wall,
    )


def _batch_nll(model, batch: torch.Tensor, row0: int, observers, data_name: str, first_window: int) -> float:
    for ob in observers:
        ob.begin_batch(row0, batch)

    def on_chunk(i, logits, t, nll, lse):
        for ob in observers:
            ob.chunk(row0 + i, logits, t, nll, lse)

    nll = window_nll(model, batch, on_chunk if observers else None)
    bad = ~torch.isfinite(nll)
    if bad.any():
        w = first_window + int(bad.nonzero()[0])
        raise QsinkError(f"the model produced a non-finite loss on window {w} of {data_name}; the model or its "
                         "quantization is numerically broken")
    return float(nll.sum())
