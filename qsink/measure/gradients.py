"""Gradient sinks ("Attention Sinks Induce Gradient Sinks", arXiv 2603.17771).

The language-model loss of each window is back-propagated, one window at a time, and for every
layer and token position we record the norm of the gradient with respect to

* ``attn_in``: the post-norm input of attention (the output of the norm in front of it; for a
  family without one, OLMo-2, attention's input), and
* ``q``, ``k``, ``v``: the outputs of q_proj, k_proj and v_proj (their rows of a fused projection:
  Phi-3's qkv_proj, GPT-2's c_attn),

summed over windows as ``||g||^2`` and reported as root-mean-square norms. The gradient-sink ratio
of position ``s`` is ``R_GS(s) = ||g_s|| / mean_{t != s} ||g_t||`` per layer, with its median over
layers. Only activations carry gradients: the embedding output is made to require grad and the
parameters' ``requires_grad`` is switched off for the pass and restored after, so no parameter
gradient is ever formed and the weights are untouched.
"""

from __future__ import annotations

import torch

from qsink.models.adapter import adapter_for

KINDS = ("attn_in", "q", "k", "v")


def gradient_norms(model, input_ids: torch.Tensor, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """``{kind: (n_layers, T)}`` RMS over windows of the per-position gradient norm."""
    ad = adapter_for(model)
    blocks = ad.blocks(model)
    device = next(model.parameters()).device
    flags = [p.requires_grad for p in model.parameters()]
    sums = {k: torch.zeros(len(blocks), input_ids.shape[1], dtype=torch.float64) for k in KINDS}
    live: dict[tuple[str, int], tuple[torch.Tensor, slice]] = {}

    def keep(kind, layer, rows=slice(None)):
        def fn(t):
            t.retain_grad()
            live[(kind, layer)] = (t, rows)
        return fn

    def out_hook(fn):
        return lambda module, args, out: fn(out[0] if isinstance(out, tuple) else out)

    hooks = [ad.embedding(model).register_forward_hook(lambda m, a, out: out.requires_grad_(True))]
    for i, block in enumerate(blocks):
        hooks.append(ad.hook_attention_input(block, keep("attn_in", i)))  # the norm's output, or attention's input
        for kind, (proj, rows) in ad.qkv_outputs(block).items():  # rows: q/k/v of a fused projection
            hooks.append(proj.register_forward_hook(out_hook(keep(kind, i, rows))))
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for start in range(0, input_ids.shape[0], batch_size):
            x = input_ids[start : start + batch_size].to(device)
            live.clear()
            with torch.enable_grad():
                loss = model(input_ids=x, labels=x, use_cache=False).loss
                loss.backward()
            for (kind, layer), (t, rows) in live.items():
                if t.grad is not None:
                    g = t.grad.detach()[..., rows].float()  # (B, T, ...)
                    sums[kind][layer] += g.flatten(2).pow(2).sum(-1).sum(0).double().cpu()
            live.clear()
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    n = input_ids.shape[0]
    return {k: (v / n).sqrt() for k, v in sums.items() if v.abs().sum() > 0}


def gradient_sink_ratio(norms: torch.Tensor, position: int = 0) -> torch.Tensor:
    """(n_layers,) ``||g_s|| / mean_{t != s} ||g_t||``."""
    others = torch.cat([norms[:, :position], norms[:, position + 1 :]], dim=1)
    return norms[:, position] / others.mean(dim=1)


def gradient_sinks(model, input_ids: torch.Tensor, position: int = 0) -> dict:
    norms = gradient_norms(model, input_ids)
    out = {"position": position, "n_windows": int(input_ids.shape[0]), "ctx": int(input_ids.shape[1]),
           "definition": "R_GS(s) = ||g_s|| / mean_{t != s} ||g_t||, g = d(LM loss)/d(activation), RMS over windows"}
    for kind, n in norms.items():
        r = gradient_sink_ratio(n, position)
        out[kind] = {"r_gs": r.tolist(), "r_gs_median": float(r.median()), "grad_norm_sink": n[:, position].tolist(),
                     "grad_norm_mean_others": (torch.cat([n[:, :position], n[:, position + 1:]], 1).mean(1)).tolist()}
    return out
