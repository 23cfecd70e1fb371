"""Attention weights out of a model: eager attention for the length of a block, each layer's weights
handed to a callback as that layer computes them, and the active-dormant split built on it.

Fast attention kernels (SDPA) never materialise the weights, so everything that reads them (the
profiler's sink statistics, the training probe, :func:`attention_split`) switches the model to
eager attention through :func:`attention_impl` and puts its own implementation back afterwards.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable

import torch

from qsink.data.synthetic import SYNTHETIC, BigramBackcopy, load_synthetic
from qsink.data.windows import make_windows, tokens_for
from qsink.models import load
from qsink.models.adapter import adapter_for


@contextlib.contextmanager
def attention_impl(model, impl: str):
    """Within the block the model runs attention implementation ``impl`` (``"eager"``, ``"sdpa"``)."""
    old = model.config._attn_implementation
    if old == impl:
        yield
        return
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


@contextlib.contextmanager
def capture_attention(model, on_weights: Callable[[int, torch.Tensor], None]):
    """Eager attention within the block; ``on_weights(layer, weights)`` gets each layer's attention
    weights, shape (B, n_head, T, T), inside its forward hook (``None`` from a module that returned
    none). Hooks are removed and the model's attention implementation restored afterwards."""
    ad = adapter_for(model)
    handles = [ad.attention(block).register_forward_hook(
        lambda m, i, o, layer=layer: on_weights(layer, o[1] if isinstance(o, tuple) and len(o) > 1 else None))
        for layer, block in enumerate(ad.blocks(model))]
    try:
        with attention_impl(model, "eager"):
            yield
    finally:
        for h in handles:
            h.remove()


def attention_split(model, tokenizer, ctx: int = 256, n_windows: int = 16, task: BigramBackcopy | None = None) -> list[dict]:
    """Where each head looks on ``bb:validation``, split by query type (the active-dormant test).

    For every layer and head: the mean attention from trigger queries and from ordinary queries
    (positions >= 2) on the first token (BOS), on the query itself and on the previous token. A
    copy head puts its trigger queries on the previous token; a dormant head that has become a
    sink puts its ordinary queries on BOS.
    """
    task = task or SYNTHETIC["bb"]
    windows = make_windows(tokenizer, load_synthetic("bb", "validation"), ctx, max_tokens=tokens_for(tokenizer, n_windows, ctx))
    ids = windows.input_ids
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    triggers = {task.word(i) for i in range(task.n_triggers)}
    is_trigger = torch.tensor([w in triggers for w in vocab])[ids]
    captured: list[torch.Tensor] = []
    with capture_attention(model, lambda layer, w: captured.append(w.detach())), torch.no_grad():
        model(ids.to(next(model.parameters()).device))
    q = torch.arange(2, ids.shape[1])
    trig = is_trigger[:, q]
    out = []
    for layer, a in enumerate(captured):  # (B, H, T, T)
        for head in range(a.shape[1]):
            A = a[:, head].float().cpu()
            parts = {"bos": A[:, q, 0], "self": A[:, q, q], "prev": A[:, q, q - 1]}
            row = {"layer": layer, "head": head}
            for name, v in parts.items():
                row[f"trigger_{name}"] = float(v[trig].mean())
                row[f"other_{name}"] = float(v[~trig].mean())
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m qsink.measure.attention CHECKPOINT [CTX]``: print :func:`attention_split`."""
    args = sys.argv[1:] if argv is None else argv
    model, tok = load(args[0], log=lambda m: None)
    print("layer head | trigger queries: bos self prev | other queries: bos self prev")
    for r in attention_split(model, tok, ctx=int(args[1]) if len(args) > 1 else 256):
        print(f"{r['layer']:5d} {r['head']:4d} | {r['trigger_bos']:.3f} {r['trigger_self']:.3f} {r['trigger_prev']:.3f} "
              f"| {r['other_bos']:.3f} {r['other_self']:.3f} {r['other_prev']:.3f}")


if __name__ == "__main__":
    main()
