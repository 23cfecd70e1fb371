"""Step-up attribution: which block and sub-layer injects a spike channel, which removes it, and the
quadratic-form view of the FFN that injects it ("The Spike, the Sparse and the Sink", arXiv 2603.05498).

Sub-layer contributions on the spike token, for pre-norm blocks (``h_mid`` is the input of the
norm in front of the FFN, so sandwich norms are included in the attention sub-layer)::

    attention: h_mid - h_in        FFN: h_out - h_mid

The injector is the sub-layer that raises ``|h[c]|`` the most, the remover the one that lowers it
the most. Post-norm blocks rescale the whole stream after each add and are refused. OLMo-2 normalises
what each sub-layer writes (not the stream): ``h_mid`` is the FFN's input there.

Quadratic form. A SwiGLU FFN computes ``out_k = sum_j D[k, j] silu(g_j . x) (u_j . x)``. Taking
the gate as near-linear, ``silu(z) ~ z`` (the approximation of the seed paper, recorded in every
result), each output channel is a quadratic form of the normalised input ``x``::

    out_k ~ x^T S_k x,    S_k = G^T diag(D[k, :]) U,    symmetrised as (S_k + S_k^T) / 2

We report the eigenvalue of largest magnitude, its ratio to the next largest in magnitude, and
the |cosine| between the spike token's normalised FFN input and the leading eigenvector, for the
spike channel and, for contrast, the median over seeded random other channels.
"""

from __future__ import annotations

import torch

from qsink.errors import QsinkError
from qsink.models.adapter import adapter_for, text_config

APPROXIMATION = ("gated FFN with its gate taken as linear: {act}(z) ~ c z, so out_k ~ x^T S_k x with "
                 "S_k = G^T diag(D[k]) U, symmetrised (the constant c scales every eigenvalue alike)")


def _gate_activation(config) -> str:
    """The gate's activation as the config names it (silu for Llama/SmolLM2, gelu_pytorch_tanh for Gemma)."""
    return str(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None) or "act")


def sublayer_deltas(model, input_ids: torch.Tensor, position: int) -> list[dict]:
    """Per block: (h_in, h_mid, h_out) on one token of one sequence (``input_ids`` shape (1, T))."""
    ad = adapter_for(model)
    if ad.postnorm or getattr(model.config, "norm", None) == "postnorm" or (ad.post_attn_norm is None and ad.mlp is None):
        raise QsinkError(f"step-up attribution needs pre-norm blocks; {ad.family} "
                         f"{getattr(model.config, 'norm', '')} is not pre-norm")
    # h_mid: the input of the norm in front of the FFN, or of the FFN itself where none is (OLMo-2 normalises
    # the sub-layers' outputs, not the residual stream)
    mid = (lambda block: ad.module(block, ad.post_attn_norm)) if ad.post_attn_norm else ad.ffn
    T = input_ids.shape[-1]

    def at(h: torch.Tensor) -> torch.Tensor:  # OPT flattens tokens to (B*T, D) before its FFN norm
        return (h.reshape(-1, T, h.shape[-1]) if h.dim() == 2 else h)[0, position].detach().float().clone()

    captured: dict[int, dict] = {}
    hooks = []
    for i, block in enumerate(ad.blocks(model)):
        hooks.append(block.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: captured.setdefault(i, {}).update(h_in=at(args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True))
        hooks.append(mid(block).register_forward_pre_hook(
            lambda m, args, kwargs, i=i: captured.setdefault(i, {}).update(h_mid=at(args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True))
        hooks.append(block.register_forward_hook(
            lambda m, args, out, i=i: captured.setdefault(i, {}).update(h_out=at(out[0] if isinstance(out, tuple) else out))))
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [captured[i] for i in range(len(captured))]


def attribute_channels(model, input_ids: torch.Tensor, channels: list[int], position: int = 0) -> list[dict]:
    """For each channel: every sub-layer's change of ``h[c]`` and ``|h[c]|``, the injector and the remover."""
    deltas = sublayer_deltas(model, input_ids, position)
    out = []
    for c in channels:
        steps = []
        for layer, d in enumerate(deltas):
            for name, before, after in (("attention", d["h_in"], d["h_mid"]), ("ffn", d["h_mid"], d["h_out"])):
                steps.append({"block": layer, "sublayer": name, "before": float(before[c]), "after": float(after[c]),
                              "delta": float(after[c] - before[c]), "delta_abs": float(after[c].abs() - before[c].abs())})
        inject = max(steps, key=lambda s: s["delta_abs"])
        remove = min(steps, key=lambda s: s["delta_abs"])
        out.append({"channel": c, "position": position, "injector": {k: inject[k] for k in ("block", "sublayer", "delta_abs")},
                    "remover": ({k: remove[k] for k in ("block", "sublayer", "delta_abs")} if remove["delta_abs"] < 0 else None),
                    "steps": steps})
    return out


def quadratic_form(gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, channel: int) -> torch.Tensor:
    """The symmetrised ``S_k`` of output channel ``channel`` (see the module docstring), (D, D) float64."""
    G, U = gate_w.double(), up_w.double()  # (F, D)
    S = G.T @ (down_w[channel].double()[:, None] * U)  # G^T diag(D[k]) U
    return (S + S.T) / 2


def spectrum_summary(S: torch.Tensor, x: torch.Tensor | None = None) -> dict:
    """Leading eigenvalue (largest |lambda|), its ratio to the next, and |cos(x, leading eigenvector)|."""
    vals, vecs = torch.linalg.eigh(S)
    order = vals.abs().argsort(descending=True)
    lead, second = vals[order[0]], vals[order[1]] if len(vals) > 1 else torch.tensor(0.0)
    out = {"lambda_1": float(lead), "lambda_2": float(second),
           "ratio": float(lead.abs() / second.abs()) if float(second) != 0 else float("inf")}
    if x is not None:
        v = vecs[:, order[0]]
        xn = x.double() / x.double().norm()
        out["cos_input_leading"] = float((xn @ v).abs())
    return out


def ffn_quadratic_analysis(model, input_ids: torch.Tensor, block_index: int, channel: int, position: int = 0,
                           n_typical: int = 16, seed: int = 0) -> dict:
    """The quadratic-form spectrum of ``channel`` in block ``block_index``'s FFN and of typical channels."""
    ad = adapter_for(model)
    block = ad.blocks(model)[block_index]
    mlp = ad.ffn(block)
    if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise QsinkError("the quadratic-form analysis needs a SwiGLU FFN (gate_proj, up_proj, down_proj)")
    x = {}
    hook = mlp.register_forward_pre_hook(lambda m, args: x.setdefault("x", args[0][0, position].detach().float().clone()))
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    finally:
        hook.remove()
    G, U, Dn = mlp.gate_proj.weight.detach().cpu(), mlp.up_proj.weight.detach().cpu(), mlp.down_proj.weight.detach().cpu()
    spike = spectrum_summary(quadratic_form(G, U, Dn, channel), x["x"].cpu())
    g = torch.Generator().manual_seed(seed)
    others = [c for c in torch.randperm(Dn.shape[0], generator=g).tolist() if c != channel][:n_typical]
    typical = [spectrum_summary(quadratic_form(G, U, Dn, c), x["x"].cpu()) for c in others]

    def median(key):
        return float(torch.tensor([t[key] for t in typical]).median()) if typical else None

    return {"block": block_index, "channel": channel, "position": position, "approximation": APPROXIMATION.format(act=_gate_activation(text_config(model))),
            "spike_channel": spike, "typical_channels": {"n": len(typical), "median_ratio": median("ratio"),
                                                         "median_abs_lambda_1": float(torch.tensor([abs(t["lambda_1"]) for t in typical]).median()) if typical else None,
                                                         "median_cos_input_leading": median("cos_input_leading")}}
