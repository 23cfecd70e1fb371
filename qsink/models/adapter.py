"""Where the parts of each model family live: blocks, norms, attention, linear layers.

All model-family knowledge in qsink is here. A family is described once by attribute paths; the
profiler, the quantizer and the analyses ask the adapter, never the model, where things are.

Example:
    >>> ad = adapter_for(model)                       # doctest: +SKIP
    >>> len(ad.blocks(model)), ad.family               # doctest: +SKIP
    (30, 'llama')

What each family needs (``rotate_residual``: Hadamard folds one rotation of the residual stream into
the weights; otherwise it rotates every block linear's input online; SmoothQuant folds its scales into
the ``norm_groups``, the ``value_pair`` and the ``ffn_pair``):

* ``llama``, ``qwen2``/``qwen3``, ``mistral``: pre-norm RMSNorm; everything folds.
* ``gemma`` (Gemma 1): Llama's layout with RMSNorm as ``x * (1 + w)`` (``norm_offset`` 1) and the
  embedding scaled by sqrt(hidden) inside the embedding module; pre-norm RMSNorms only, so the residual
  rotation folds (the norm's scale is fused and the norm set to ``w = 0``, i.e. a factor of 1).
* ``gemma2``/``gemma3_text``: sandwich norms (the post-norms write the residual), ``x * (1 + w)``:
  SmoothQuant folds into the pre-norms; Hadamard online. ``gemma3`` (the image-text models, 4B and up):
  the same blocks under ``model.language_model``; sizes come from the text config (:func:`text_config`).
* ``olmo2``: the norms sit AFTER attention and the FFN, on what they write to the residual, plus q/k
  norms; nothing normalises the input of q/k/v (``input_norm`` is None: the profiler and the gradients
  read attention's input instead). SmoothQuant is refused (no norm to fold into); Hadamard online.
* ``phi3``: Llama's layout with fused ``qkv_proj`` and ``gate_up_proj``; the rewrites address parts of
  a fused output as row ranges (``"self_attn.qkv_proj[96:120]"``, see :meth:`FamilyAdapter.rows`):
  SmoothQuant divides the v rows of qkv_proj and the up rows of gate_up_proj, KV quantization quantizes
  the k and v rows of qkv_proj's output. Everything folds, the residual rotation too.
* ``gpt2``: LayerNorm with bias, transformers' ``Conv1D`` (weight stored (in, out)) for every linear,
  fused ``c_attn``, GELU, learned positions added after the token embedding (h_0 is the first block's
  input). :meth:`FamilyAdapter.linearize_` turns each Conv1D into the equivalent ``nn.Linear`` before
  anything rewrites weights (quantize_ does this). SmoothQuant folds into ln_1 / ln_2 (weight and bias)
  and the v rows of c_attn; no ffn_pair (GELU); Hadamard online (LayerNorm subtracts the mean).
* ``opt``: pre-norm LayerNorm with bias (``self_attn_layer_norm``, ``final_layer_norm`` in each block),
  fc1/fc2 directly in the block (ReLU; no FFN module), learned positions (h_0 is the first block's
  input); SmoothQuant folds into both LayerNorms and v_proj -> out_proj; Hadamard online. OPT-350m
  (``do_layer_norm_before=False``) is post-norm: SmoothQuant and step-up attribution are refused.
* ``gpt_neox``: LayerNorm, parallel blocks, per-head interleaved fused qkv: no rewrites (SmoothQuant
  refused, Hadamard online) and no KV quantization.
"""

from __future__ import annotations

import re
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from qsink.errors import QsinkError


@functools.lru_cache(maxsize=None)
def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always ships it
        return ()
    return Conv1D


_ROWS = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<start>\d+):(?P<stop>\d+)\]$")


def split_rows(spec: str) -> tuple[str, slice | None]:
    """``"self_attn.qkv_proj[96:120]"`` -> ``("self_attn.qkv_proj", slice(96, 120))``; a plain path -> (path, None)."""
    m = _ROWS.match(spec)
    if m is None:
        return spec, None
    return m["path"], slice(int(m["start"]), int(m["stop"]))


def _hidden_states(args, kwargs) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


@dataclass(frozen=True)
class FamilyAdapter:
    family: str
    model_types: tuple[str, ...]  # config.model_type values this adapter serves
    blocks_path: str  # from the CausalLM module to the ModuleList of blocks
    embed_path: str  # token embedding module
    final_norm_path: str
    attn: str  # attention submodule of a block (its output is (attn_output, attn_weights))
    input_norm: str | None  # norm in front of attention in a block; None where attention reads the residual (OLMo-2)
    post_attn_norm: str | None  # norm in front of the FFN (pre-norm models)
    mlp: str | None  # the FFN submodule; None where its linears sit in the block itself (OPT)
    # for function-preserving rewrites (SmoothQuant, Hadamard rotation); empty where unsupported.
    # A linear's path may carry a row range, "path[start:stop]": those output rows of a fused linear.
    norm_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a per-channel affine norm and the linears that read its output
    residual_writers: tuple[str, ...] = ()  # linears whose output is added to the residual stream
    value_pair: tuple[str, str] | None = None  # (v_proj, o_proj): o's input is linear in v's output
    ffn_pair: tuple[str, str] | None = None  # (up_proj, down_proj): down's input is linear in up's output
    # the residual stream can be rotated with the rotation folded into weights: every norm on it is an
    # RMSNorm (scale-free once its weight is fused into the readers) and only residual_writers write to it
    rotate_residual: bool = True
    # a norm's output is x_hat * (norm_offset + weight): 0 for Llama-style norms, 1 for Gemma's x * (1 + w)
    norm_offset: float = 0.0
    # where q, k and v come out (each a linear's path, with a row range for a fused projection); None:
    # found by name (k_proj / v_proj anywhere in the block, q_proj/k_proj/v_proj on the attention module)
    qkv: tuple[str, str, str] | None = None
    # h_0 (the residual stream entering block 0) is the first block's input, not the token embedding's
    # output: learned positions are added after the embedding (GPT-2, OPT)
    h0_at_first_block: bool = False
    # the residual stream itself is normalised after each add (original Transformer, OPT-350m)
    postnorm: bool = False
    # why SmoothQuant / the residual rotation cannot fold into this family (the refusal says it)
    no_rewrites_reason: str = ""
    specialize: Callable[[nn.Module], "FamilyAdapter"] | None = None  # per-config layout (qsink's own family)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(_get(model, self.blocks_path))

    def embedding(self, model: nn.Module) -> nn.Module:
        return _get(model, self.embed_path)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm_path)

    def attention(self, block: nn.Module) -> nn.Module:
        return _get(block, self.attn)

    def norm_before_attention(self, block: nn.Module) -> nn.Module | None:
        return None if self.input_norm is None else _get(block, self.input_norm)

    def ffn(self, block: nn.Module) -> nn.Module | None:
        return None if self.mlp is None else _get(block, self.mlp)

    def module(self, block: nn.Module, path: str) -> nn.Module:
        return _get(block, path)

    def rows(self, block: nn.Module, spec: str) -> tuple[nn.Module, slice]:
        """The linear a (possibly row-ranged) path names and the output rows it means (all if none given)."""
        path, rows = split_rows(spec)
        return _get(block, path), (rows if rows is not None else slice(None))

    def set_module(self, block: nn.Module, path: str, new: nn.Module) -> None:
        parent, _, leaf = path.rpartition(".")
        setattr(_get(block, parent) if parent else block, leaf, new)

    # --- hooks on the residual stream --------------------------------------------------------
    def hook_h0(self, model: nn.Module, fn: Callable[[torch.Tensor], None]):
        """Call ``fn(h_0)`` on every forward (h_0 as in ``output_hidden_states[0]``); returns the handle."""
        if self.h0_at_first_block:
            return self.blocks(model)[0].register_forward_pre_hook(
                lambda m, args, kwargs: fn(_hidden_states(args, kwargs)), with_kwargs=True)
        return self.embedding(model).register_forward_hook(lambda m, i, o: fn(o))

    def hook_attention_input(self, block: nn.Module, fn: Callable[[torch.Tensor], None]):
        """Call ``fn(x)`` with what attention reads: the output of the norm in front of it, or, for a
        family without one (OLMo-2), attention's ``hidden_states`` input. Returns the handle."""
        norm = self.norm_before_attention(block)
        if norm is not None:
            return norm.register_forward_hook(lambda m, i, o: fn(o))
        return self.attention(block).register_forward_pre_hook(
            lambda m, args, kwargs: fn(_hidden_states(args, kwargs)), with_kwargs=True)

    # --- norms ---------------------------------------------------------------------------------
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
        """Refuse ``method`` (a rewrite that folds into norms) for a family without ``norm_groups``."""
        if not self.norm_groups:
            reason = self.no_rewrites_reason or "it needs the pre-norm layout of Llama-style blocks"
            raise QsinkError(f"{method} is not implemented for {self.family} models: {reason}; "
                             "use another outlier-handling method")

    def can_rotate_residual(self) -> bool:
        return bool(self.norm_groups) and self.rotate_residual

    # --- linears -------------------------------------------------------------------------------
    def linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """Every linear layer inside a block (``nn.Linear``, and transformers' ``Conv1D`` in GPT-2), by its
        path relative to the block (e.g. ``self_attn.q_proj``)."""
        kinds = (nn.Linear,) + ((_conv1d_type(),) if _conv1d_type() else ())
        return {name: m for name, m in block.named_modules() if isinstance(m, kinds)}

    def has_conv1d(self, model: nn.Module) -> bool:
        """Whether :meth:`linearize_` would convert anything (GPT-2's Conv1D layers in the blocks)."""
        conv = _conv1d_type()
        return bool(conv) and any(isinstance(m, conv) for block in self.blocks(model) for m in block.modules())

    @torch.no_grad()
    def linearize_(self, model: nn.Module) -> int:
        """Replace every ``Conv1D`` in the blocks (``y = x W + b``, W stored (in, out)) by the equivalent
        ``nn.Linear`` (weight ``W^T``), in place, so weight rewrites and quantizers see (out, in)
        weights. Function-preserving; returns how many were replaced (0 for families without Conv1D)."""
        conv = _conv1d_type()
        if not conv:
            return 0
        n = 0
        for block in self.blocks(model):
            for name, m in list(block.named_modules()):
                if isinstance(m, conv):
                    w = m.weight
                    lin = nn.Linear(w.shape[0], w.shape[1], bias=m.bias is not None, device=w.device, dtype=w.dtype)
                    lin.weight.copy_(w.T)
                    lin.weight.requires_grad_(w.requires_grad)
                    if m.bias is not None:
                        lin.bias.copy_(m.bias)
                        lin.bias.requires_grad_(m.bias.requires_grad)
                    lin.train(m.training)
                    self.set_module(block, name, lin)
                    n += 1
        return n

    def qkv_outputs(self, block: nn.Module) -> dict[str, tuple[nn.Module, slice]]:
        """``{"q"|"k"|"v": (linear, output rows)}`` for the projections this block has (may be empty)."""
        if self.qkv is not None:
            return {kind: self.rows(block, spec) for kind, spec in zip("qkv", self.qkv)}
        attn = self.attention(block)
        return {kind: (getattr(attn, f"{kind}_proj"), slice(None)) for kind in "qkv" if hasattr(attn, f"{kind}_proj")}

    def kv_outputs(self, block: nn.Module) -> dict[str, tuple[slice, ...] | None]:
        """The block linears (by path) whose outputs hold k or v, with the rows that do (None: all rows)."""
        if self.qkv is None:
            return {name: None for name in self.linears(block) if name.rsplit(".", 1)[-1] in ("k_proj", "v_proj")}
        out: dict[str, list[slice]] = {}
        for spec in self.qkv[1:]:
            path, rows = split_rows(spec)
            out.setdefault(path, []).append(rows)
        return {p: (None if any(r is None for r in rs) else _merge(rs)) for p, rs in out.items()}


def _merge(rows: list[slice]) -> tuple[slice, ...]:
    merged: list[slice] = []
    for r in sorted(rows, key=lambda r: r.start):
        if merged and merged[-1].stop == r.start:
            merged[-1] = slice(merged[-1].start, r.stop)
        else:
            merged.append(r)
    return tuple(merged)


def text_config(model: nn.Module):
    """The config of the language model's blocks: a multimodal model's ``text_config`` (Gemma 3 4B and
    up load as ``gemma3`` with the text model's sizes one level down), the model's own config otherwise."""
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def head_dims(model: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dimension) of a model's attention."""
    cfg = text_config(model)
    heads = cfg.num_attention_heads
    return heads, getattr(cfg, "num_key_value_heads", None) or heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads


def n_gqa(model: nn.Module) -> int:
    """Query heads per key/value head (llama.cpp's n_gqa, which some of its type rules read)."""
    cfg = text_config(model)
    heads = getattr(cfg, "num_attention_heads", None) or 1
    return max(1, heads // (getattr(cfg, "num_key_value_heads", None) or heads))


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


_LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

_LLAMA_LIKE = dict(
    blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
    attn="self_attn", input_norm="input_layernorm", post_attn_norm="post_attention_layernorm", mlp="mlp",
    norm_groups=(("input_layernorm", _LLAMA_QKV),
                 ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    residual_writers=("self_attn.o_proj", "mlp.down_proj"),
    value_pair=("self_attn.v_proj", "self_attn.o_proj"),
    ffn_pair=("mlp.up_proj", "mlp.down_proj"),
    qkv=_LLAMA_QKV,
)

# Gemma 2 / 3: a norm before and after each sub-layer (sandwich), RMSNorm as x * (1 + w); Gemma 3
# adds q/k norms (head_dim wide, after the projections: nothing to fold there). The post-norms write
# the residual, so a residual rotation cannot be folded; Hadamard rotates each linear's input online.
_GEMMA_SANDWICH = dict(
    blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
    attn="self_attn", input_norm="input_layernorm", post_attn_norm="pre_feedforward_layernorm", mlp="mlp",
    norm_groups=(("input_layernorm", _LLAMA_QKV),
                 ("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    value_pair=("self_attn.v_proj", "self_attn.o_proj"), ffn_pair=("mlp.up_proj", "mlp.down_proj"),
    rotate_residual=False, norm_offset=1.0, qkv=_LLAMA_QKV,
)

# OLMo-2: attention and the FFN read the residual stream as it is; their outputs are normalised
# (post_attention_layernorm, post_feedforward_layernorm) before the add; q and k are normalised after
# their projections (over all heads). No norm in front of any linear: nothing for SmoothQuant to fold
# into, and the norms on the residual writes rule out a folded rotation.
_OLMO2 = dict(
    blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
    attn="self_attn", input_norm=None, post_attn_norm=None, mlp="mlp", rotate_residual=False, qkv=_LLAMA_QKV,
    value_pair=("self_attn.v_proj", "self_attn.o_proj"),  # no norm on v: o's input is linear in v's output
    no_rewrites_reason="OLMo-2 has no norm in front of q/k/v (its norms sit after attention and the FFN, on what "
                       "they write to the residual stream), so there is no norm to fold the smoothing scales into",
)


def _phi3(model: nn.Module) -> FamilyAdapter:
    """Phi-3: fused qkv_proj (q rows, then k, then v) and gate_up_proj (gate rows, then up)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    q, kv, inter = n_heads * head_dim, n_kv * head_dim, cfg.intermediate_size
    qkv = "self_attn.qkv_proj"
    return FamilyAdapter(
        "phi3", ("phi3",), blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
        attn="self_attn", input_norm="input_layernorm", post_attn_norm="post_attention_layernorm", mlp="mlp",
        norm_groups=(("input_layernorm", (qkv,)), ("post_attention_layernorm", ("mlp.gate_up_proj",))),
        residual_writers=("self_attn.o_proj", "mlp.down_proj"),
        value_pair=(f"{qkv}[{q + kv}:{q + 2 * kv}]", "self_attn.o_proj"),
        ffn_pair=(f"mlp.gate_up_proj[{inter}:{2 * inter}]", "mlp.down_proj"),
        qkv=(f"{qkv}[0:{q}]", f"{qkv}[{q}:{q + kv}]", f"{qkv}[{q + kv}:{q + 2 * kv}]"),
    )


def _gpt2(model: nn.Module) -> FamilyAdapter:
    """GPT-2: c_attn's output is q, k, v (each hidden_size wide) side by side."""
    D = model.config.hidden_size
    return FamilyAdapter(
        "gpt2", ("gpt2",), blocks_path="transformer.h", embed_path="transformer.wte", final_norm_path="transformer.ln_f",
        attn="attn", input_norm="ln_1", post_attn_norm="ln_2", mlp="mlp",
        norm_groups=(("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))),
        residual_writers=("attn.c_proj", "mlp.c_proj"),
        value_pair=(f"attn.c_attn[{2 * D}:{3 * D}]", "attn.c_proj"), ffn_pair=None,  # gelu(c_fc) is not linear
        rotate_residual=False,  # LayerNorm subtracts the mean: it does not commute with a rotation
        qkv=(f"attn.c_attn[0:{D}]", f"attn.c_attn[{D}:{2 * D}]", f"attn.c_attn[{2 * D}:{3 * D}]"),
        h0_at_first_block=True,  # wte + wpe (then transformer.drop)
    )


def _opt(model: nn.Module) -> FamilyAdapter:
    cfg = model.config
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    common = dict(blocks_path="model.decoder.layers", embed_path="model.decoder.embed_tokens",
                  final_norm_path="model.decoder.final_layer_norm", attn="self_attn", mlp=None,
                  residual_writers=("self_attn.out_proj", "fc2"), rotate_residual=False, qkv=qkv,
                  h0_at_first_block=True,  # learned positions (and project_in) after embed_tokens
                  value_pair=("self_attn.v_proj", "self_attn.out_proj"))  # v -> out_proj is linear whatever the norms
    if not getattr(cfg, "do_layer_norm_before", True):
        return FamilyAdapter("opt", ("opt",), input_norm=None, post_attn_norm=None, postnorm=True, **common,
                             no_rewrites_reason="this OPT (do_layer_norm_before=False, as OPT-350m) is post-norm: its "
                                                "LayerNorms normalise the residual stream itself, not only what the "
                                                "linears read")
    if not getattr(cfg, "layer_norm_elementwise_affine", True):
        return FamilyAdapter("opt", ("opt",), input_norm="self_attn_layer_norm", post_attn_norm="final_layer_norm",
                             **common, no_rewrites_reason="its LayerNorms have no per-channel weight to fold into")
    return FamilyAdapter(
        "opt", ("opt",), input_norm="self_attn_layer_norm", post_attn_norm="final_layer_norm", **common,
        norm_groups=(("self_attn_layer_norm", qkv), ("final_layer_norm", ("fc1",))),
        ffn_pair=None,  # ReLU between fc1 and fc2
    )


ADAPTERS: list[FamilyAdapter] = [
    FamilyAdapter("llama", ("llama",), **_LLAMA_LIKE),
    FamilyAdapter("qwen2", ("qwen2", "qwen3"), **_LLAMA_LIKE),
    FamilyAdapter("mistral", ("mistral",), **_LLAMA_LIKE),
    # Gemma 1: Llama's pre-norm layout, x * (1 + w) norms: the residual rotation folds through norm_scale/unit_norm
    FamilyAdapter("gemma", ("gemma",), **{**_LLAMA_LIKE, "norm_offset": 1.0}),
    FamilyAdapter("gemma3", ("gemma3_text", "gemma2"), **_GEMMA_SANDWICH),
    # Gemma 3 4B and up (``gemma3``): the same blocks inside an image-text model, whose vision tower and
    # projector stay as they are (only the language model's blocks are measured and quantized)
    FamilyAdapter("gemma3", ("gemma3",), **{**_GEMMA_SANDWICH, "blocks_path": "model.language_model.layers",
                                            "embed_path": "model.language_model.embed_tokens",
                                            "final_norm_path": "model.language_model.norm"}),
    FamilyAdapter("olmo2", ("olmo2",), **_OLMO2),
    FamilyAdapter("phi3", ("phi3",), input_norm="input_layernorm", post_attn_norm="post_attention_layernorm",
                  blocks_path="model.layers", embed_path="model.embed_tokens", final_norm_path="model.norm",
                  attn="self_attn", mlp="mlp", specialize=_phi3),
    FamilyAdapter("gpt2", ("gpt2",), blocks_path="transformer.h", embed_path="transformer.wte",
                  final_norm_path="transformer.ln_f", attn="attn", input_norm="ln_1", post_attn_norm="ln_2",
                  mlp="mlp", specialize=_gpt2),
    FamilyAdapter("opt", ("opt",), blocks_path="model.decoder.layers", embed_path="model.decoder.embed_tokens",
                  final_norm_path="model.decoder.final_layer_norm", attn="self_attn", input_norm="self_attn_layer_norm",
                  post_attn_norm="final_layer_norm", mlp=None, specialize=_opt),
    FamilyAdapter("gpt_neox", ("gpt_neox",), blocks_path="gpt_neox.layers", embed_path="gpt_neox.embed_in",
                  final_norm_path="gpt_neox.final_layer_norm", attn="attention", input_norm="input_layernorm",
                  post_attn_norm="post_attention_layernorm", mlp="mlp",
                  no_rewrites_reason="LayerNorm and parallel attention/FFN blocks; its fused query_key_value "
                                     "interleaves q, k and v per head"),
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
