"""SmoothQuant (Xiao et al. 2023, arXiv 2211.10438): migrate activation outliers into weights.

For a linear with input X and weight W, per input channel j:
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``; X is divided by s and W's column j multiplied by
it, which leaves ``X W^T`` unchanged. The division is folded into what produces X:

* q/k/v and gate/up read a norm's output: the norm's per-channel factor (and bias, for LayerNorm
  and DyT) is divided by s (one s shared by the linears reading the same norm, using the max over
  their weights); for Gemma's ``x * (1 + w)`` that means ``1 + w' = (1 + w)/s``, not ``w/s``;
* o_proj reads the attention output, linear in v_proj's output: v_proj's output rows are
  divided by s, with s shared by the query heads that share a kv head (grouped-query attention);
* down_proj reads ``act(gate) * up``, linear in up_proj's output: up_proj's rows are divided by s.

For fused projections the adapter names row ranges: Phi-3's v rows of ``qkv_proj`` and up rows of
``gate_up_proj``, GPT-2's v rows of ``c_attn``. LayerNorm (GPT-2, OPT) has its weight and bias divided.
Families with no norm in front of the linears (OLMo-2, post-norm OPT) are refused before any compute,
with the adapter's reason.

Scales come from calibration windows (absmax of each linear's input on the fp model).
"""

from __future__ import annotations

import torch

from qsink.models.adapter import text_config
from qsink.quant.calibration import CalibrationStats
from qsink.quant.handling.base import Handler, needs_acts, register

EPS = 1e-5


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act_absmax.float().clamp_min(EPS).pow(alpha) / w_absmax.clamp_min(EPS).pow(1 - alpha)
    return s.clamp_min(EPS)


@register
class SmoothQuant(Handler):
    name = "smoothquant"
    description = "per-channel difficulty migration from activations to weights, alpha 0.5 (arXiv 2211.10438)"
    needs_calibration = True
    inputs_unchanged = False  # divides the inputs by s

    def __init__(self, alpha: float = 0.5):
        if not 0 <= alpha <= 1:
            raise ValueError("smoothquant alpha must be in [0, 1]")
        self.alpha = float(alpha)
        self.max_scale = 0.0

    def check(self, scheme) -> None:
        needs_acts(self, scheme)

    def check_model(self, adapter) -> None:
        adapter.require_rewrites(self.name)  # a family with no norm to fold into (OLMo-2, post-norm OPT)

    @torch.no_grad()
    def prepare(self, model, adapter, calib, scheme) -> None:
        adapter.require_rewrites(self.name)
        # the fp model's per-channel maxima: shared by every cell of the model when the caller has them
        stats = (self.shared or CalibrationStats(model, adapter, calib)).input_absmax()
        cfg = text_config(model)
        n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        for l, block in enumerate(adapter.blocks(model)):
            for norm_path, readers in adapter.norm_groups:
                norm = adapter.module(block, norm_path)
                lins = [adapter.module(block, r) for r in readers]
                s = smooth_scales(stats[(l, readers[0])], [m.weight for m in lins], self.alpha)
                adapter.divide_norm(norm, s)  # in the norm's own parametrization (Gemma: 1 + w)
                for m in lins:
                    m.weight.mul_(s.to(m.weight.dtype))
                self.max_scale = max(self.max_scale, float(s.max()))
            if adapter.value_pair:
                (v, v_rows), o = adapter.rows(block, adapter.value_pair[0]), adapter.module(block, adapter.value_pair[1])
                s = smooth_scales(stats[(l, adapter.value_pair[1])], [o.weight], self.alpha)
                d = o.weight.shape[1] // n_heads
                s_kv = s.view(n_kv, n_heads // n_kv, d).amax(dim=1)  # one scale per v channel
                v.weight[v_rows].div_(s_kv.reshape(-1, 1).to(v.weight.dtype))
                if v.bias is not None:
                    v.bias[v_rows].div_(s_kv.reshape(-1).to(v.bias.dtype))
                o.weight.mul_(s_kv.repeat_interleave(n_heads // n_kv, dim=0).reshape(1, -1).to(o.weight.dtype))
            if adapter.ffn_pair:
                (up, up_rows), down = adapter.rows(block, adapter.ffn_pair[0]), adapter.module(block, adapter.ffn_pair[1])
                s = smooth_scales(stats[(l, adapter.ffn_pair[1])], [down.weight], self.alpha)
                up.weight[up_rows].div_(s.reshape(-1, 1).to(up.weight.dtype))
                if up.bias is not None:
                    up.bias[up_rows].div_(s.to(up.bias.dtype))
                down.weight.mul_(s.reshape(1, -1).to(down.weight.dtype))

    def report(self) -> dict:
        return {"alpha": self.alpha, "max_scale": self.max_scale}

    def shared_needs(self, scheme) -> set[str]:
        return {"absmax"}  # its scales; a static scheme's own pass follows the smoothing
