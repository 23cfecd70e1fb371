"""Hadamard rotation of the residual stream, folded into the weights (QuaRot, arXiv 2404.00456).

1. Each RMSNorm's scale is fused into the linears that read it (and the final norm's into
   ``lm_head``), leaving scale-free norms, which commute with orthogonal maps (the adapter's
   ``norm_scale`` / ``unit_norm`` handle Gemma 1's ``x * (1 + w)``: the norm is left at ``w = 0``).
2. With the row-vector residual ``h -> h Q`` for a seeded random Hadamard ``Q`` (orthogonal):
   the embedding becomes ``E Q``; linears reading the residual ``W Q``; linears writing it
   ``Q^T W``; ``lm_head`` ``W Q`` (tied embeddings are untied first).
3. An online Hadamard ``H`` rotates the input of down_proj at run time (its weight becomes
   ``W H``), which spreads the FFN's intermediate outliers before activation quantization.

Where the residual stream cannot be rotated with folded weights (norms on the residual writes:
Gemma 2/3's sandwich, OLMo-2; DyT; LayerNorm: GPT-2, OPT, GPT-NeoX; post-norm:
``adapter.can_rotate_residual()`` is false), every linear in
every block is rotated online instead: its weight becomes ``W H`` and its input ``x H`` at run
time, so ``(x H)(W H)^T = x W^T`` and both operands are quantized in the rotated basis. The record
says which mode ran (``mode: residual`` or ``mode: online``); online costs one Hadamard transform
per linear per forward.

Without quantization the model computes the same function (tested to 1e-4 for every norm variant).
Sizes that are not powers of two use Paley constructions (:mod:`qsink.quant.hadamard_matrices`). QuaRot's
per-head rotation of v/o is not applied.
"""

from __future__ import annotations

import torch

from qsink.models.adapter import text_config
from qsink.quant.hadamard_matrices import apply_hadamard, hadamard_factors, random_hadamard
from qsink.quant.handling.base import Handler, register
from qsink.quant.handling.gptq import GPTQ


@torch.no_grad()
def untie_head_(model, adapter) -> None:
    """Give ``lm_head`` its own weight where it is tied to the embedding: they receive different transforms."""
    emb, head = adapter.embedding(model), model.get_output_embeddings()
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model, "_tied_weights_keys"):
            model._tied_weights_keys = None


@torch.no_grad()
def fuse_norms_(model, adapter) -> None:
    """Step 1: each norm's scale multiplied into the linears that read it (the final norm's into lm_head), the
    norms left scale-free."""
    head = model.get_output_embeddings()
    for block in adapter.blocks(model):
        for norm_path, readers in adapter.norm_groups:
            norm = adapter.module(block, norm_path)
            for r in readers:
                lin = adapter.module(block, r)
                lin.weight.mul_(adapter.norm_scale(norm).to(lin.weight.dtype)[None, :])
            adapter.unit_norm(norm)
    final = adapter.final_norm(model)
    head.weight.mul_(adapter.norm_scale(final).to(head.weight.dtype)[None, :])
    adapter.unit_norm(final)


@torch.no_grad()
def rotate_residual_(model, adapter, Q: torch.Tensor) -> None:
    """Step 2: the residual stream ``h -> h Q`` (Q orthogonal, float64) folded into the weights of a model whose
    norms are fused and whose head is untied."""
    emb, head = adapter.embedding(model), model.get_output_embeddings()
    Q = Q.to(emb.weight.device, torch.float64)
    emb.weight.copy_((emb.weight.double() @ Q).to(emb.weight.dtype))
    for block in adapter.blocks(model):
        for _, readers in adapter.norm_groups:
            for r in readers:
                lin = adapter.module(block, r)
                lin.weight.copy_((lin.weight.double() @ Q).to(lin.weight.dtype))
        for w in adapter.residual_writers:
            lin = adapter.module(block, w)
            lin.weight.copy_((Q.T @ lin.weight.double()).to(lin.weight.dtype))
            if lin.bias is not None:
                lin.bias.copy_((lin.bias.double() @ Q).to(lin.bias.dtype))
    head.weight.copy_((head.weight.double() @ Q).to(head.weight.dtype))


@torch.no_grad()
def rotate_down_inputs_(model, adapter) -> None:
    """Step 3's weight half: ``W <- W H`` for each block's down projection (its input gets ``x H`` online)."""
    for block in adapter.blocks(model):
        down = adapter.module(block, adapter.ffn_pair[1])
        down.weight.copy_(apply_hadamard(down.weight.double()).to(down.weight.dtype))


@register
class Hadamard(Handler):
    name = "hadamard"
    inputs_unchanged = False  # rotates / scales the linears' inputs: its own calibration pass
    description = ("randomized Hadamard rotation of the residual stream folded into weights, online Hadamard before down_proj "
                   "(QuaRot); layouts that cannot fold it (sandwich, DyT, LayerNorm, post-norm) rotate each linear's input online")

    def __init__(self, seed: int = 0, online: bool = True):
        self.seed, self.online = int(seed), bool(online)
        self.ffn_pair = None
        self.mode = "residual"
        self.online_all: set[str] = set()

    @torch.no_grad()
    def prepare(self, model, adapter, calib, scheme) -> None:
        if not adapter.can_rotate_residual():
            return self._prepare_online(model, adapter)
        D = text_config(model).hidden_size
        hadamard_factors(D)  # refuse an impossible size before touching weights
        untie_head_(model, adapter)
        fuse_norms_(model, adapter)
        rotate_residual_(model, adapter, random_hadamard(D, self.seed))
        # 3. online Hadamard in front of down_proj: W <- W H, input x <- x H
        if self.online and adapter.ffn_pair:
            self.ffn_pair = adapter.ffn_pair
            rotate_down_inputs_(model, adapter)

    @torch.no_grad()
    def _prepare_online(self, model, adapter) -> None:
        """Every block linear: ``W <- W H``, input ``x <- x H`` at run time."""
        self.mode = "online"
        blocks = adapter.blocks(model)
        for n in sorted({lin.in_features for b in blocks for lin in adapter.linears(b).values()}):
            hadamard_factors(n)  # refuse an impossible size before touching weights
        for block in blocks:
            for name, lin in adapter.linears(block).items():
                lin.weight.copy_(apply_hadamard(lin.weight.double()).to(lin.weight.dtype))
                self.online_all.add(name)

    def linear_options(self, layer: int, name: str) -> dict:
        if name in self.online_all or (self.ffn_pair and name == self.ffn_pair[1]):
            return {"input_transform": apply_hadamard, "transform_name": "hadamard"}
        return {}

    def rewrite_key(self) -> tuple:
        return ("hadamard", self.seed, self.online)

    def adopt(self, prepared: Handler) -> None:
        rotation = getattr(prepared, "rotation", prepared)  # a QuaRot's rotation is a Hadamard
        self.mode, self.ffn_pair, self.online_all = rotation.mode, rotation.ffn_pair, set(rotation.online_all)

    def report(self) -> dict:
        if self.mode == "online":
            return {"mode": "online", "online_linears": sorted(self.online_all)}
        return {"mode": "residual", "seed": self.seed, "online_down_proj": self.online}


@register
class QuaRot(Handler):
    """The rotation of :class:`Hadamard`, then GPTQ on the rotated weights: QuaRot's recipe for
    4-bit weights (Ashkboos et al. 2024, arXiv 2404.00456, quantize the rotated model's weights with
    GPTQ rather than round-to-nearest). The Hessians are collected on the rotated inputs."""

    name = "quarot"
    inputs_unchanged = False  # rotates / scales the linears' inputs: its own calibration pass
    description = "hadamard's rotation followed by GPTQ on the rotated weights (QuaRot, arXiv 2404.00456); integer weights"
    needs_calibration = True

    def __init__(self, seed: int = 0, damp: float = 0.01, block: int = 128):
        self.rotation, self.gptq = Hadamard(seed=seed), GPTQ(damp=damp, block=block)

    def check(self, scheme) -> None:
        self.gptq.check(scheme)

    def prepare(self, model, adapter, calib, scheme) -> None:
        self.rotation.prepare(model, adapter, calib, scheme)

    def linear_options(self, layer: int, name: str) -> dict:
        return self.rotation.linear_options(layer, name)

    def install(self, model, ctx) -> list:
        return self.rotation.install(model, ctx) + self.gptq.install(model, ctx)

    def after_calibration(self, qlinears: dict) -> None:
        self.gptq.after_calibration(qlinears)

    def rewrite_key(self) -> tuple:
        return self.rotation.rewrite_key()

    def adopt(self, prepared: Handler) -> None:
        self.rotation.adopt(prepared)

    def shared_needs(self, scheme) -> set[str]:
        return super().shared_needs(scheme) | {"hessian"}

    def report(self) -> dict:
        return {"rotation": self.rotation.report(), "gptq": self.gptq.report()}
