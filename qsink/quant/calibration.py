"""Calibration data and statistics: a fixed, seeded set of windows from a training split.

Calibration never reads the test split: by default it draws ``n`` windows (seeded) from
``austen:train``.
"""

from __future__ import annotations

import torch

from qsink.data.text import Text
from qsink.data.windows import Windows, make_windows


def calibration_windows(tokenizer, text: Text, n: int, ctx: int, seed: int = 0) -> Windows:
    """``n`` windows of ``ctx`` tokens drawn without replacement (seeded) from ``text``."""
    w = make_windows(tokenizer, text, ctx)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(w.n_windows, generator=g)[: min(n, w.n_windows)].sort().values
    w.input_ids = w.input_ids[idx]
    w.data_name = f"{text.name} (calibration: {len(idx)} windows, seed {seed})"
    return w


@torch.inference_mode()
def run_windows(model, windows: Windows, batch_size: int = 4) -> None:
    device = next(model.parameters()).device
    for start in range(0, windows.n_windows, batch_size):
        model(input_ids=windows.input_ids[start : start + batch_size].to(device), use_cache=False)


@torch.inference_mode()
def linear_input_absmax(model, adapter, windows: Windows, batch_size: int = 4) -> dict[tuple[int, str], torch.Tensor]:
    """Per-channel absmax of the input of every linear in the blocks, over ``windows``."""
    stats: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(key):
        def fn(module, args):
            a = args[0].detach().float().abs().amax(dim=tuple(range(args[0].dim() - 1)))
            stats[key] = a if key not in stats else torch.maximum(stats[key], a)
        return fn

    try:
        for l, block in enumerate(adapter.blocks(model)):
            for name, lin in adapter.linears(block).items():
                handles.append(lin.register_forward_pre_hook(hook((l, name))))
        run_windows(model, windows, batch_size)
    finally:
        for h in handles:
            h.remove()
    return stats
