"""Token-level perplexity and bits per byte over fixed windows.

Perplexity is ``exp(mean NLL)`` over every scored token (the convention of the quantization
papers, e.g. GPTQ and SmoothQuant), not lm-eval's word perplexity. Bits per byte is the summed NLL
in bits divided by the UTF-8 bytes of the scored tokens' text (decoded window by window).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from qsink.data.windows import Windows
from qsink.errors import QsinkError


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


def window_nll(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each window's predictions of positions 1..T-1, shape (B,), float64.

    ``logsumexp - target logit`` in fp32 agrees with a float64 log-softmax to ~1e-8 here, while
    ``F.cross_entropy`` on the (B, V, T) layout drifted by ~1e-4 nats per token on SmolLM2. When the
    logits of a whole batch would exceed :data:`LOGIT_BYTES` (Gemma 3's 262,144-token head: 2.1 GB
    for 4 windows of 512), the base model runs once and the head over chunks of positions, so peak
    memory stays bounded; the result is the same computation (tested against the full path).
    """
    B, T = input_ids.shape
    head = model.get_output_embeddings()
    targets = input_ids[:, 1:]
    if B * (T - 1) * head.weight.shape[0] * 4 <= LOGIT_BYTES:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
        return _nll(logits, targets).double().sum(dim=1)
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]  # (B, T-1, D)
    flat, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    rows = max(1, LOGIT_BYTES // (4 * head.weight.shape[0]))
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2's tanh cap, as its forward applies it
    parts = []
    for i in range(0, flat.shape[0], rows):
        logits = head(flat[i : i + rows]).float()
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        parts.append(_nll(logits, flat_t[i : i + rows]))
    return torch.cat(parts).view(B, T - 1).double().sum(dim=1)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[..., None]).squeeze(-1)


@torch.inference_mode()
def perplexity(
    model,
    tokenizer,
    windows: Windows,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` over ``windows``, ``batch_size`` windows per forward.

    Example:
        >>> res = perplexity(model, tok, make_windows(tok, text, ctx=512))  # doctest: +SKIP
        >>> round(res.ppl, 2)                                               # doctest: +SKIP
    """
    device = next(model.parameters()).device
    ids = windows.input_ids
    t0 = time.perf_counter()
    total = 0.0
    for start in range(0, windows.n_windows, batch_size):
        batch = ids[start : start + batch_size].to(device)
        nll = window_nll(model, batch)
        bad = ~torch.isfinite(nll)
        if bad.any():
            w = start + int(bad.nonzero()[0])
            raise QsinkError(f"the model produced a non-finite loss on window {w} of {windows.data_name}; the model or its quantization is numerically broken")
        total += float(nll.sum())
        if on_batch:
            on_batch(int(batch.shape[0]))
    wall = time.perf_counter() - t0
    n = windows.n_scored
    n_bytes = scored_bytes(tokenizer, windows)
    return PerplexityResult(
        ppl=math.exp(total / n), nll=total / n, bpb=total / math.log(2) / max(n_bytes, 1), nll_sum=total,
        n_scored=n, n_bytes=n_bytes, wall_s=wall, tokens_per_s=windows.n_windows * windows.ctx / wall,
    )
