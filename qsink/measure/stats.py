"""Pure tensor statistics of the profiler; each is checked against a direct computation in tests.

Definitions and their sources:

* kurtosis of a token's hidden vector over channels, ``E[(x-mu)^4] / sigma^4`` (population
  moments), and excess kurtosis ``- 3`` (Bondarenko et al. 2023, "Quantizable Transformers",
  arXiv 2306.12929);
* a massive activation is ``|h| > abs_threshold`` and ``|h| > ratio_threshold * median |h|`` of its
  layer (Sun et al. 2024, "Massive Activations in Large Language Models", arXiv 2402.17762;
  defaults 100 and 1000);
* sink score alpha of a head, the mean over query positions ``i >= 1`` of the attention weight on
  key position 0 (Gu et al. 2024, "When Attention Sink Emerges", arXiv 2410.10781).
"""

from __future__ import annotations

import torch


def token_kurtosis(h: torch.Tensor) -> torch.Tensor:
    """Kurtosis over the last dimension: ``(..., D) -> (...)``."""
    x = h.float()
    d = x - x.mean(dim=-1, keepdim=True)
    m2 = d.pow(2).mean(dim=-1)
    m4 = d.pow(4).mean(dim=-1)
    return m4 / m2.clamp_min(torch.finfo(torch.float32).tiny).pow(2)


def massive_mask(abs_h: torch.Tensor, median: float, abs_threshold: float, ratio_threshold: float) -> torch.Tensor:
    return (abs_h > abs_threshold) & (abs_h > ratio_threshold * median)


def sink_alpha(weights: torch.Tensor) -> torch.Tensor:
    """Per head, mean over queries i >= 1 of the weight on key 0: ``(B, H, T, T) -> (B, H)``."""
    return weights[:, :, 1:, 0].float().mean(dim=-1)


def key_mass(weights: torch.Tensor) -> torch.Tensor:
    """Mean attention each key k receives from the later queries i > k: ``(B, H, T, T) -> (B, H, T)``.

    The last key has no later query and gets 0. ``key_mass[..., 0]`` differs from ``sink_alpha``
    only in excluding nothing (query 0 is excluded from both, as i > 0).
    """
    w = weights.float()
    T = w.shape[-1]
    later = w.sum(dim=-2) - torch.diagonal(w, dim1=-2, dim2=-1) - torch.triu(w, diagonal=1).sum(dim=-2)
    count = torch.arange(T - 1, -1, -1, device=w.device, dtype=w.dtype)  # queries i > k: T-1-k
    return later / count.clamp_min(1)


def topk_abs(abs_h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k values of a (T, D) map of magnitudes and their (position, channel) coordinates."""
    vals, idx = abs_h.flatten().topk(min(k, abs_h.numel()))
    D = abs_h.shape[-1]
    return vals, torch.stack([idx // D, idx % D], dim=-1)
