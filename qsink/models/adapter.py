"""Where the parts of each model family live: blocks, norms, attention, linear layers.

All model-family knowledge in qsink is here. A family is described once by attribute paths; the
profiler, the quantizer and the analyses ask the adapter, never the model, where things are.

Example:
    >>> ad = adapter_for(model)                       # doctest: +SKIP
    >>> len(ad.blocks(model)), ad.family               # doctest: +SKIP
    (30, 'llama')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from qsink.errors import QsinkError


@dataclass(frozen=True)
class FamilyAdapter:
    family: str
    model_types: tuple[str, ...]  # config.model_type values this adapter serves
    blocks_path: str  # from the CausalLM module to the ModuleList of blocks
    embed_path: str  # token embedding module
    final_norm_path: str
    attn: str  # attention submodule of a block (its output is (attn_output, attn_weights))
    input_norm: str  # norm in front of attention in a block
    post_attn_norm: str | None  # norm in front of the FFN (pre-norm models)
    mlp: str
    # for function-preserving rewrites (SmoothQuant, Hadamard rotation); empty where unsupported
    norm_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a per-channel affine norm and the linears that read its output
    residual_writers: tuple[str, ...] = ()  # linears whose output is added to the residual stream
    value_pair: tuple[str, str] | None = None  # (v_proj, o_proj): o's input is linear in v's output
    ffn_pair: tuple[str, str] | None = None  # (up_proj, down_proj): down's input is linear in up's output
    # the residual stream can be rotated with the rotation folded into weights: every norm on it is an
    # RMSNorm (scale-free once its weight is fused into the readers) and only residual_writers write to it
    rotate_residual: bool = True
    # a norm's output is x_hat * (norm_offset + weight): 0 for Llama-style norms, 1 for Gemma's x * (1 + w)
    norm_offset: float = 0.0
    specialize: Callable[[nn.Module], "FamilyAdapter"] | None = None  # per-config layout (qsink's own family)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(_get(model, self.blocks_path))

    def embedding(self, model: nn.Module) -> nn.Module:
        return _get(model, self.embed_path)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm_path)

    def attention(self, block: nn.Module) -> nn.Module:
        return _get(block, self.attn)

    def norm_before_attention(self, block: nn.Module) -> nn.Module:
        return _get(block, self.input_norm)

    def ffn(self, block: nn.Module) -> nn.Module:
        return _get(block, self.mlp)

    def module(self, block: nn.Module, path: str) -> nn.Module:
        return _get(block, path)

    def set_module(self, block: nn.Module, path: str, new: nn.Module) -> None:
        parent, _, leaf = path.rpartition(".")
        setattr(_get(block, parent) if parent else block, leaf, new)

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel factor a norm multiplies its normalised input by (``offset + weight``)."""
        return norm.weight.detach().float() + self.norm_offset

    @torch.no_grad()
    def divide_norm(self, norm: nn.Module, s: torch.Tensor) -> None:
        """Make the norm's output ``1/s`` times what it was, per channel, in the norm's own
        parametrization: ``offset + w' = (offset + w) / s`` (for Gemma ``w' = (1 + w)/s - 1``, never
        ``w/s``); a bias (LayerNorm, DyT) is divided by ``s`` as well."""
        norm.weight.copy_((self.norm_scale(norm) / s.float() - self.norm_offset).to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s.to(norm.bias.dtype))

    @torch.no_grad()
    def unit_norm(self, norm: nn.Module) -> None:
        """Make the norm's per-channel factor 1 (its scale has been fused into the readers)."""
        norm.weight.fill_(1.0 - self.norm_offset)

    def require_rewrites(self, method: str) -> None:
        if not self.norm_groups:
            raise QsinkError(f"{method} is not implemented for {self.family} models (it needs the pre-norm "
                             "layout of Llama-style blocks); use another outlier-handling method")

    def can_rotate_residual(self) -> bool:
        return bool(self.norm_groups) and self.rotate_residual

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Every linear layer inside a block, by its path relative to the block (e.g. ``self_attn.q_proj``)."""
        return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


_LLAMA_LIKE = dict(
    blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
    attn="self_attn", input_norm="input_layernorm", post_attn_norm="post_attention_layernorm", mlp="mlp",
    norm_groups=(("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                 ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    residual_writers=("self_attn.o_proj", "mlp.down_proj"),
    value_pair=("self_attn.v_proj", "self_attn.o_proj"),
    ffn_pair=("mlp.up_proj", "mlp.down_proj"),
)

# Gemma 2 / 3: a norm before and after each sub-layer (sandwich), RMSNorm as x * (1 + w); Gemma 3
# adds q/k norms (head_dim wide, after the projections: nothing to fold there). The post-norms write
# the residual, so a residual rotation cannot be folded; Hadamard rotates each linear's input online.
_GEMMA_SANDWICH = dict(
    blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
    attn="self_attn", input_norm="input_layernorm", post_attn_norm="pre_feedforward_layernorm", mlp="mlp",
    norm_groups=(("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                 ("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    value_pair=("self_attn.v_proj", "self_attn.o_proj"), ffn_pair=("mlp.up_proj", "mlp.down_proj"),
    rotate_residual=False, norm_offset=1.0,
)

ADAPTERS: list[FamilyAdapter] = [
    FamilyAdapter("llama", ("llama",), **_LLAMA_LIKE),
    FamilyAdapter("qwen2", ("qwen2", "qwen3"), **_LLAMA_LIKE),
    FamilyAdapter("mistral", ("mistral",), **_LLAMA_LIKE),
    FamilyAdapter("gemma3", ("gemma3_text", "gemma2"), **_GEMMA_SANDWICH),
    FamilyAdapter("gpt_neox", ("gpt_neox",), blocks_path="gpt_neox.layers", embed_path="gpt_neox.embed_in",
                  final_norm_path="gpt_neox.final_layer_norm", attn="attention", input_norm="input_layernorm",
                  post_attn_norm="post_attention_layernorm", mlp="mlp"),
]


def register_adapter(adapter: FamilyAdapter) -> None:
    """Teach qsink a new family (qsink's own variant family registers itself this way)."""
    ADAPTERS.append(adapter)


def supported_model_types() -> list[str]:
    return sorted({t for a in ADAPTERS for t in a.model_types})


def adapter_for(model: nn.Module) -> FamilyAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a.specialize(model) if a.specialize else a
    raise QsinkError(
        f"qsink does not know where the blocks of a {model_type!r} model are; supported families: "
        f"{', '.join(supported_model_types())} (add one in qsink/models/adapter.py)"
    )
