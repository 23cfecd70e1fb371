"""How much each linear's quantization moves the model away from the fp model, per linear and per part
(weights, input activations), predicted from one backward pass, and measured for the whole model.

The prediction is the second-order (Fisher) expansion of the KL divergence. For a small change δ of a
linear's output y, KL(p ‖ p_δ) ≈ ½ δᵀ F δ, with F = E_{ŷ∼p}[∇_y log p(ŷ) ∇_y log p(ŷ)ᵀ] the Fisher
information of the model's own predictions (the Hessian of the KL divergence at δ = 0). One label ŷ is
sampled per position from the fp model's distribution; g_t, the gradient of Σ_s log p(ŷ_s) at token
t's output of the linear, then gives the unbiased single-sample estimate (g_t · δ_t)² of δ_tᵀ F δ_t.
The quantization error at a token is δ_t = (W_q − W) x_t for the weights and W (Q(x_t) − x_t) for the
input activations, x_t being the input the linear's weight sees (after its handler's transform). So

    predicted KLD of part p of linear l  =  ½ · Σ_t (g_t · δ_{l,p,t})² / N      (N positions)

which is SqueezeLLM's Fisher-weighted sensitivity (arXiv 2306.07629, §3.1) taken at the linear's output
rather than per weight, so that it sees how the error of one token's input spreads across the output.
Terms of different tokens and linears are assumed independent (no cross terms): the predictions add.
:func:`measured_kld` gives the real KL divergence of a whole quantized model, against which
``qsink advise`` scales these predictions and checks its choice.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from qsink.data.windows import Windows
from qsink.quant.qlinear import QLinear


def fisher_sensitivity(model, windows: Windows, batch_size: int = 1, seed: int = 0,
                       on_batch: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Predicted mean KL divergence per position caused by each QLinear's weights and (where the
    scheme quantizes them) input activations of a model quantized by :func:`qsink.quant.quantize_`:
    ``{"3.mlp.down_proj": {"weight": 1.2e-4, "act": 3.4e-3}}``. The model computes the fp function
    meanwhile (its QuantContext in ``off`` mode) and is left as it was."""
    ctx = model.qsink_quant_context
    qs = {m.name: m for m in model.modules() if isinstance(m, QLinear)}
    sums = {n: {"weight": 0.0, "act": 0.0} for n in qs}
    params = list(model.parameters())
    grads_were = [p.requires_grad for p in params]
    mode_was = ctx.mode
    handles = []

    def watch(name: str, q: QLinear):
        def hook(mod, inputs, out):
            if not out.requires_grad:
                return
            x = inputs[0].detach()
            xt = (mod.input_transform(x) if mod.input_transform is not None else x).detach()

            def on_grad(g):
                with torch.no_grad():
                    g = g.detach().float()
                    w_fp = mod.weight_fp.float()
                    dw = F.linear(xt.float(), mod.weight_q.float() - w_fp)
                    sums[name]["weight"] += float(((g * dw).sum(-1) ** 2).sum())
                    if mod.act_fmt is not None:
                        xq = mod.quantize_input(xt)
                        mask = mod._keep_mask(xt)
                        if mask is not None:
                            xq = torch.where(mask[..., None], xt, xq)
                        da = F.linear((xq - xt).float(), w_fp)
                        sums[name]["act"] += float(((g * da).sum(-1) ** 2).sum())
                return None

            out.register_hook(on_grad)
        return hook

    def grad_from_here(mod, inputs, out):  # gradients to the activations only: no weight needs one
        return out.detach().requires_grad_(True)

    gen = torch.Generator().manual_seed(seed)
    n_positions = 0
    try:
        for p in params:
            p.requires_grad_(False)
        ctx.mode = "off"
        handles.append(model.get_input_embeddings().register_forward_hook(grad_from_here))
        handles += [q.register_forward_hook(watch(n, q)) for n, q in qs.items()]
        device = next(model.parameters()).device
        for i in range(0, windows.n_windows, batch_size):
            ids = windows.input_ids[i:i + batch_size].to(device)
            with torch.enable_grad():
                logits = model(input_ids=ids).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                labels = torch.multinomial(logp.detach().exp().reshape(-1, logp.shape[-1]).cpu(), 1, generator=gen)
                labels = labels.to(device).reshape(ids.shape)
                logp.gather(-1, labels[..., None]).sum().backward()
            n_positions += ids.numel()
            if on_batch:
                on_batch(ids.shape[0])
    finally:
        for h in handles:
            h.remove()
        ctx.mode = mode_was
        for p, req in zip(params, grads_were):
            p.requires_grad_(req)
    return {n: {k: 0.5 * v / max(n_positions, 1) for k, v in parts.items()} for n, parts in sums.items()}


@torch.no_grad()
def measured_kld(fp_model, q_model, windows: Windows, batch_size: int = 1) -> float:
    """The mean KL divergence KL(p_fp ‖ p_q) per position over the whole vocabulary, on ``windows``."""
    device = next(fp_model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, windows.n_windows, batch_size):
        ids = windows.input_ids[i:i + batch_size].to(device)
        lp = torch.log_softmax(fp_model(input_ids=ids).logits.float(), dim=-1)
        lq = torch.log_softmax(q_model(input_ids=ids).logits.float(), dim=-1)
        total += float((lp.exp() * (lp - lq)).sum())
        n += ids.numel()
    return total / max(n, 1)
