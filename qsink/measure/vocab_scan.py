"""The position-0 vocabulary scan ("The Spike, the Sparse and the Sink", arXiv 2603.05498).

Each vocabulary item (or a seeded sample) is placed at position 0 in front of a fixed short
continuation, and we ask whether its residual stream carries a massive activation (|h| above
``massive_abs`` and above ``massive_ratio`` x the median |h| of that short sequence, the
definition of :mod:`qsink.measure.stats`) at the checked layers. The forward pass stops after the
last checked layer and never computes the logits, which is what makes the full SmolLM2
vocabulary fit in minutes on a CPU. Delimiter tokens are checked the same way at a later
position (after a fixed prefix).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from qsink.models.adapter import adapter_for

CONTINUATION = " and then it rained"
DELIMITER_PREFIX = "The house was quiet"
DELIMITERS = (".", ",", ";", ":", "!", "?", "\n", " -", " (")


class _Stop(Exception):
    pass


def _massive_at(model, input_ids: torch.Tensor, layers: list[int], position: int, abs_t: float, ratio_t: float):
    """(B,) bool: a massive activation at ``position`` in any of ``layers``; and (B,) its largest |h| there."""
    ad = adapter_for(model)
    blocks = ad.blocks(model)
    wanted = {layer - 1: layer for layer in layers}  # block i writes h_{i+1}
    last = max(wanted)
    hit = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    peak = torch.zeros(input_ids.shape[0])

    def hook(i):
        def fn(module, args, out):
            nonlocal hit, peak
            h = (out[0] if isinstance(out, tuple) else out).detach().float().abs().cpu()  # (B, T, D)
            med = h.flatten(1).median(dim=1).values  # per sequence
            top = h[:, position].max(dim=-1).values
            hit |= (top > abs_t) & (top > ratio_t * med)
            peak = torch.maximum(peak, top)
            if i == last:
                raise _Stop

        return fn

    hooks = [blocks[i].register_forward_hook(hook(i)) for i in wanted]
    try:
        with torch.no_grad():  # stops inside the last wanted block: no later block, no logits
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return hit, peak


def vocab_scan(model, tokenizer, layers: list[int], sample: int | None = None, seed: int = 0,
               massive_abs: float = 100.0, massive_ratio: float = 1000.0, batch_size: int = 512,
               continuation: str = CONTINUATION, max_exceptions: int = 50,
               on_batch: Callable[[int], None] | None = None) -> dict:
    """Fraction of vocabulary items that spike at position 0, the exceptions, and the delimiters."""
    vocab = len(tokenizer)
    ids = torch.arange(vocab)
    if sample and sample < vocab:
        ids = ids[torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:sample]].sort().values
    cont = torch.tensor(tokenizer(continuation, add_special_tokens=False).input_ids, dtype=torch.long)
    t0 = time.perf_counter()
    spikes, peaks = [], []
    for start in range(0, len(ids), batch_size):
        first = ids[start : start + batch_size]
        x = torch.cat([first[:, None], cont.expand(len(first), -1)], dim=1)
        hit, peak = _massive_at(model, x, layers, 0, massive_abs, massive_ratio)
        spikes.append(hit)
        peaks.append(peak)
        if on_batch:
            on_batch(len(first))
    spike = torch.cat(spikes)
    peak = torch.cat(peaks)
    wall = time.perf_counter() - t0
    misses = ids[~spike].tolist()
    lo, hi = max(float(peak.min()), 1e-3), max(float(peak.max()), 1e-2)
    edges = torch.logspace(torch.log10(torch.tensor(lo)) - 0.01, torch.log10(torch.tensor(hi)) + 0.01, 41)
    counts = torch.histogram(peak.clamp(min=lo), bins=edges).hist
    exceptions = [{"token_id": t, "token": tokenizer.decode([t]), "peak": float(peak[i])}
                  for i, t in zip((~spike).nonzero().flatten().tolist(), misses)][:max_exceptions]
    # delimiters at a later position: prefix + delimiter + continuation, checked at the delimiter
    prefix = tokenizer(DELIMITER_PREFIX, add_special_tokens=True).input_ids
    delim = []
    for d in DELIMITERS:
        d_ids = tokenizer(d, add_special_tokens=False).input_ids
        if len(d_ids) != 1:
            continue
        x = torch.tensor([prefix + d_ids + cont.tolist()])
        hit, top = _massive_at(model, x, layers, len(prefix), massive_abs, massive_ratio)
        delim.append({"token": d, "token_id": d_ids[0], "position": len(prefix), "spike": bool(hit[0]), "peak": float(top[0])})
    return {
        "layers": layers, "continuation": continuation, "n_scanned": len(ids), "vocab_size": vocab,
        "sampled": bool(sample and sample < vocab), "seed": seed,
        "n_spike": int(spike.sum()), "fraction_spike": float(spike.float().mean()),
        "n_exceptions": len(misses), "exceptions": exceptions, "delimiters": delim,
        "peak_histogram": {"edges": edges.tolist(), "counts": [int(c) for c in counts]},
        "wall_s": wall, "tokens_per_s": len(ids) * (1 + len(cont)) / wall,
        "definition": f"|h| > {massive_abs} and > {massive_ratio} x the median |h| of its short sequence, at position 0, "
                      f"in any of layers {layers}",
    }
