"""``QLinear``: a linear layer with fake-quantized weights and input activations.

One module for every scheme and outlier-handling method; the method decides the options
(an input rotation, LLM.int8 outlier columns, static scales, clipping), the shared
:class:`QuantContext` decides what a forward does:

* ``quant``: the quantized computation (the default);
* ``off``: the same module with quantization switched off (transforms still applied), for
  function-preservation checks;
* ``calibrate``: fp computation, recording input absmax and a sample of input rows;
* ``sqnr``: quantized output, plus the fp output of the same input, accumulated into a
  signal-to-quantization-noise ratio.

KV quantization fake-quantizes a k_proj / v_proj output with ``out_fmt``; for a fused projection
(Phi-3's qkv_proj, GPT-2's c_attn) only its k and v rows (``out_rows``) are quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from qsink.quant.calibration import record_input
from qsink.quant.schemes import QuantFormat


@dataclass
class QuantContext:
    mode: str = "quant"
    keep_mask: torch.Tensor | None = None  # (B, T) True where a token's activations stay in high precision
    kept_tokens: int = 0
    seen_tokens: int = 0
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))


def fake_rows(y: torch.Tensor, fake: Callable[[torch.Tensor], torch.Tensor], rows) -> torch.Tensor:
    """``fake`` on the output ``y``, or only on its ``rows`` (output ranges sorted by start: the k and v of a fused
    qkv projection); the other outputs as they are."""
    if rows is None:
        return fake(y)
    parts, at = [], 0
    for r in rows:
        parts += [y[..., at : r.start], fake(y[..., r.start : r.stop])]
        at = r.stop
    parts.append(y[..., at:])
    return torch.cat(parts, dim=-1)


class QLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, name: str, ctx: QuantContext,
                 weight_fmt: QuantFormat | None, act_fmt: QuantFormat | None, out_fmt: QuantFormat | None = None,
                 input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None, transform_name: str = "",
                 outlier_threshold: float | None = None, act_static: bool = False,
                 out_rows: tuple[slice, ...] | None = None):
        super().__init__()
        self.name, self.ctx = name, ctx
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight_fmt, self.act_fmt, self.out_fmt = weight_fmt, act_fmt, out_fmt
        self.out_rows = None if out_rows is None else tuple(sorted(out_rows, key=lambda r: r.start))  # out_fmt's rows (fused k/v)
        self.input_transform, self.transform_name = input_transform, transform_name
        self.outlier_threshold = outlier_threshold
        self.outlier_weights_fp = True  # LLM.int8 as published; False: int8 weights everywhere (bitsandbytes inference)
        self.act_static = act_static
        self.weight_clip = 1.0
        self.act_clip = 1.0
        self.weight_importance = None  # per input column (llama.cpp's imatrix), weighting the GGUF quantization search
        self.register_buffer("weight_fp", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("weight_q", self._quantize_weight())
        self.register_buffer("act_scale", None)
        # calibration and error statistics
        self.calib_absmax = None  # per-channel absmax of the (transformed) input
        self.calib_rows: list[torch.Tensor] = []
        self.sqnr_signal = 0.0
        self.sqnr_noise = 0.0
        self.outlier_columns_seen = 0
        self.collect_hessian = False  # GPTQ: accumulate 2 X^T X during calibration
        self.hessian = None
        self.collect_sumsq = False  # imatrix: accumulate the sum of x^2 per input column during calibration
        self.sumsq = None
        self.sumsq_rows = 0

    @classmethod
    def from_float(cls, linear: nn.Linear, name: str, ctx: QuantContext, weight_fmt, act_fmt, **kw) -> "QLinear":
        return cls(linear.weight, linear.bias, name, ctx, weight_fmt, act_fmt, **kw)

    @property
    def weight(self) -> torch.Tensor:  # what a reader of module.weight should see: the quantized weight
        return self.weight_q

    def _quantize_weight(self) -> torch.Tensor:
        if self.weight_fmt is None:
            return self.weight_fp
        return self.weight_fmt.fake(self.weight_fp, clip_ratio=self.weight_clip, importance=self.weight_importance)

    def set_weight_format(self, fmt, importance: torch.Tensor | None = None) -> None:
        """Quantize the fp weight again, with another format and/or an importance per input column."""
        self.weight_fmt, self.weight_importance = fmt, importance
        self.weight_q = self._quantize_weight()

    def set_weight_clip(self, ratio: float) -> None:
        self.weight_clip = ratio
        self.weight_q = self._quantize_weight()

    def set_static_scale(self) -> None:
        """Per-tensor scale ``absmax / qmax`` from the calibration pass (clipping multiplies it)."""
        amax = float(self.calib_absmax.max()) if self.calib_absmax is not None else 0.0
        self.act_scale = torch.tensor(amax / self.act_fmt.qmax() if amax > 0 else 1.0, device=self.weight_fp.device)

    def quantize_input(self, x: torch.Tensor, clip: float | None = None) -> torch.Tensor:
        if self.act_fmt is None:
            return x
        clip = self.act_clip if clip is None else clip
        if self.act_static:
            return self.act_fmt.fake(x, scale=self.act_scale * clip)
        return self.act_fmt.fake(x, clip_ratio=clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        mode = self.ctx.mode
        if mode in ("off", "calibrate"):
            if mode == "calibrate":
                self._record(x)
            return F.linear(x, self.weight_fp, self.bias)
        w = self.weight_q
        if self.outlier_threshold is not None and self.act_fmt is not None:
            cols = x.abs().amax(dim=tuple(range(x.dim() - 1))) > self.outlier_threshold  # (in,)
            self.outlier_columns_seen = max(self.outlier_columns_seen, int(cols.sum()))
            xq = torch.where(cols, x, self.quantize_input(x * ~cols))
            if self.outlier_weights_fp:
                w = torch.where(cols[None, :], self.weight_fp, w)
        else:
            xq = self.quantize_input(x)
        mask = self._keep_mask(x)
        if mask is not None and self.act_fmt is not None:
            xq = torch.where(mask[..., None], x, xq)
        y = F.linear(xq, w, self.bias)
        if self.out_fmt is not None:
            y = self._fake_output(y)
        if mode == "sqnr":
            ref = F.linear(x, self.weight_fp, self.bias)
            self.sqnr_signal += float(ref.double().pow(2).sum())
            self.sqnr_noise += float((y.double() - ref.double()).pow(2).sum())
        return y

    def _keep_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The context's (B, T) keep mask laid out like ``x``'s rows: as it is, or flattened where the model
        flattens tokens before a linear (OPT's fc1/fc2 read (B*T, D)); None when there is none or it cannot match."""
        mask = self.ctx.keep_mask
        if mask is None:
            return None
        if mask.shape == x.shape[:-1]:
            return mask
        if x.dim() == 2 and mask.numel() == x.shape[0]:
            return mask.reshape(-1)
        return None

    def _fake_output(self, y: torch.Tensor) -> torch.Tensor:
        return fake_rows(y, self.out_fmt.fake, self.out_rows)

    def _record(self, x: torch.Tensor) -> None:
        mask = self._keep_mask(x) if self.act_fmt is not None else None  # kept tokens are not quantized: no scales
        record_input(self, x, mask=mask, generator=self.ctx.generator, hessian=self.collect_hessian,
                     sumsq=self.collect_sumsq)

    def take_inputs(self, stats) -> None:
        """Use calibration statistics computed elsewhere (:class:`qsink.quant.calibration.CalibrationStats`) instead
        of this module's own calibration pass: what that pass would have recorded, from the fp model's inputs."""
        self.calib_absmax = stats.calib_absmax
        self.calib_rows = list(stats.calib_rows)
        if self.collect_hessian:
            self.hessian = None if stats.hessian is None else stats.hessian.clone()
        if self.collect_sumsq:
            self.sumsq, self.sumsq_rows = stats.sumsq, stats.sumsq_rows

    @property
    def sqnr_db(self) -> float | None:
        if self.sqnr_signal == 0:
            return None
        return math.inf if self.sqnr_noise == 0 else 10 * math.log10(self.sqnr_signal / self.sqnr_noise)

    def extra_repr(self) -> str:
        parts = [f"{self.in_features}->{self.out_features}", f"w={self.weight_fmt or 'fp'}", f"a={self.act_fmt or 'fp'}"]
        if self.act_static:
            parts.append("static")
        if self.out_fmt is not None:
            rows = "" if self.out_rows is None else " rows " + ",".join(f"{r.start}:{r.stop}" for r in self.out_rows)
            parts.append(f"out={self.out_fmt}{rows}")
        if self.transform_name:
            parts.append(f"in_transform={self.transform_name}")
        if self.outlier_threshold is not None:
            parts.append(f"llm.int8 threshold={self.outlier_threshold}")
        if self.weight_clip != 1.0 or self.act_clip != 1.0:
            parts.append(f"clip w={self.weight_clip:.2f} a={self.act_clip:.2f}")
        return ", ".join(parts)
