"""qsink's Llama-style decoder with swappable normalizer, gating, FFN, V-scale and softmax.

Shapes are commented as (B, T, D) for the residual stream and (B, H, T, d) per head. Module names
follow Llama (``model.layers[i].self_attn.q_proj``, ``mlp.down_proj``, ...), so every qsink tool
finds its parts through the same adapter. This module imports no training, quantization or
evaluation code.

Variant definitions:

* ``sandwich``: an extra norm on each sub-layer's output before the residual add;
  ``qknorm``: RMSNorm over each head's q and k (before RoPE); ``sandwich-qk``: both;
  ``dyt``: every norm is DynamicTanh ``gamma * tanh(alpha * x) + beta`` with one learnable scalar
  alpha (init 0.5); ``postnorm``: ``h = norm(h + f(h))``; ``layernorm``: LayerNorm with bias.
* gates multiply the attention output before o_proj by ``sigmoid(.)``: ``head`` (one gate per head
  from the block's normalised input), ``channel`` (one per head channel), ``static-head`` (one
  learned logit per head, no input).
* ``vscale``: ``v_h <- s_h * v_h`` with a learned scalar ``s_h`` per layer and head (init 1), applied
  after v_proj. The function class is unchanged (it could be folded into v_proj), but the gradient
  reaching v_proj and the parameter's own update differ, which is the point of arXiv 2603.17771.
* FFN ``swiglu``: ``down(silu(gate(x)) * up(x))``; ``gelu``: ``down(gelu(up(x)))``; ``linear``:
  ``down(up(x))``; ``none``: a second attention layer in the FFN's place.
* ``softmax1``: softmax with an extra zero logit, ``exp(x_i) / (1 + sum_j exp(x_j))``;
  ``clipped``: ``clip((zeta - gamma) softmax(x) + gamma, 0, 1)`` (Bondarenko et al. 2023,
  arXiv 2306.12929).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from qsink.models.family.config import QsinkConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class DynamicTanh(nn.Module):
    """``gamma * tanh(alpha * x) + beta`` (Zhu et al. 2025, "Transformers without Normalization")."""

    def __init__(self, dim: int, alpha_init: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim))  # gamma
        self.bias = nn.Parameter(torch.zeros(dim))  # beta

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias


def make_norm(cfg: QsinkConfig, dim: int) -> nn.Module:
    if cfg.norm == "dyt":
        return DynamicTanh(dim, cfg.dyt_alpha_init)
    if cfg.norm == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.norm_eps)
    return RMSNorm(dim, cfg.norm_eps)


def rope_cos_sin(T: int, d: int, theta: float, device, dtype):
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)  # (T, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, d), the rotate-half layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):  # x (B, H, T, d)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: QsinkConfig, gated: bool = True):
        super().__init__()
        D, H, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        self.cfg, self.H, self.d = cfg, H, d
        self.q_proj = nn.Linear(D, H * d, bias=False)
        self.k_proj = nn.Linear(D, H * d, bias=False)
        self.v_proj = nn.Linear(D, H * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.gate = cfg.gate if gated else "none"
        if self.gate == "head":
            self.gate_proj = nn.Linear(D, H, bias=False)
        elif self.gate == "channel":
            self.gate_proj = nn.Linear(D, H * d, bias=False)
        elif self.gate == "static-head":
            self.gate_logit = nn.Parameter(torch.zeros(H))
        if cfg.vscale:
            self.v_scale = nn.Parameter(torch.ones(H))

    def forward(self, x, cos, sin):  # x (B, T, D): the block's normalised input
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.d).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, self.H, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.H, self.d).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cfg.vscale:
            v = v * self.v_scale.view(1, self.H, 1, 1)
        weights = None
        if self.cfg.softmax == "standard" and self.cfg._attn_implementation != "eager":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d)  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.float().masked_fill(~causal, float("-inf"))
            if self.cfg.softmax == "softmax1":
                zero = scores.new_zeros(B, self.H, T, 1)
                weights = torch.cat([scores, zero], dim=-1).softmax(dim=-1)[..., :T]
            else:
                weights = scores.softmax(dim=-1)
                if self.cfg.softmax == "clipped":
                    g, z = self.cfg.clip_gamma, self.cfg.clip_zeta
                    weights = ((z - g) * weights + g).clamp(0, 1)
            weights = weights.to(v.dtype)
            out = weights @ v  # (B, H, T, d)
        if self.gate == "head":
            out = out * torch.sigmoid(self.gate_proj(x)).transpose(1, 2).unsqueeze(-1)
        elif self.gate == "channel":
            out = out * torch.sigmoid(self.gate_proj(x)).view(B, T, self.H, self.d).transpose(1, 2)
        elif self.gate == "static-head":
            out = out * torch.sigmoid(self.gate_logit).view(1, self.H, 1, 1)
        out = out.transpose(1, 2).reshape(B, T, self.H * self.d)
        return self.o_proj(out), weights


class FFN(nn.Module):
    def __init__(self, cfg: QsinkConfig):
        super().__init__()
        D, F_ = cfg.hidden_size, cfg.intermediate_size
        self.kind = cfg.ffn
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(D, F_, bias=False)
        self.up_proj = nn.Linear(D, F_, bias=False)
        self.down_proj = nn.Linear(F_, D, bias=False)

    def forward(self, x, cos=None, sin=None):
        if self.kind == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.kind == "gelu":
            return self.down_proj(F.gelu(self.up_proj(x)))
        return self.down_proj(self.up_proj(x))


class AttentionFFN(Attention):
    """The FFN slot filled by a second (ungated) attention layer (``ffn="none"``)."""

    def __init__(self, cfg: QsinkConfig):
        super().__init__(cfg, gated=False)

    def forward(self, x, cos, sin):
        return super().forward(x, cos, sin)[0]


class Block(nn.Module):
    def __init__(self, cfg: QsinkConfig):
        super().__init__()
        D = cfg.hidden_size
        self.postnorm = cfg.norm == "postnorm"
        self.input_layernorm = make_norm(cfg, D)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = make_norm(cfg, D)
        self.mlp = AttentionFFN(cfg) if cfg.ffn == "none" else FFN(cfg)
        if cfg.sandwich:
            self.attn_out_norm, self.mlp_out_norm = make_norm(cfg, D), make_norm(cfg, D)
        self.sandwich = cfg.sandwich

    def forward(self, h, cos, sin):  # h (B, T, D)
        if self.postnorm:
            h = self.input_layernorm(h + self.self_attn(h, cos, sin)[0])
            return self.post_attention_layernorm(h + self.mlp(h, cos, sin))
        a = self.self_attn(self.input_layernorm(h), cos, sin)[0]
        if self.sandwich:
            a = self.attn_out_norm(a)
        h = h + a
        f = self.mlp(self.post_attention_layernorm(h), cos, sin)
        if self.sandwich:
            f = self.mlp_out_norm(f)
        return h + f


class QsinkPreTrainedModel(PreTrainedModel):
    config_class = QsinkConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    def set_attn_implementation(self, attn_implementation, **kwargs):
        """'sdpa' (fast) or 'eager' (materialises attention weights, which the profiler reads)."""
        if attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"qsink models implement 'eager' and 'sdpa' attention, not {attn_implementation!r}")
        self.config._attn_implementation = attn_implementation

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class QsinkModel(QsinkPreTrainedModel):
    def __init__(self, cfg: QsinkConfig):
        super().__init__(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Identity() if cfg.norm == "postnorm" else make_norm(cfg, cfg.hidden_size)
        self.post_init()

    def forward(self, input_ids, output_hidden_states: bool = False):
        B, T = input_ids.shape
        h = self.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = rope_cos_sin(T, self.config.head_dim, self.config.rope_theta, h.device, h.dtype)
        hidden = [h] if output_hidden_states else None
        for block in self.layers:
            h = block(h, cos, sin)
            if hidden is not None:
                hidden.append(h)
        h = self.norm(h)
        if hidden is not None:
            hidden[-1] = h  # as transformers does: the last entry is after the final norm
        return h, hidden


class QsinkForCausalLM(QsinkPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, cfg: QsinkConfig):
        super().__init__(cfg)
        self.model = QsinkModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new):
        self.lm_head = new

    def forward(self, input_ids=None, labels=None, attention_mask=None, output_hidden_states=False, use_cache=None,
                return_dict=True, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("qsink models take unpadded batches (attention_mask must be all ones)")
        h, hidden = self.model(input_ids, output_hidden_states=output_hidden_states)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden else None)
