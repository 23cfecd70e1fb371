"""AWQ: per-input-channel scales that protect the weights of salient channels (Lin et al. 2024, "AWQ:
Activation-aware Weight Quantization for LLM Compression and Acceleration", arXiv 2306.00978).

For a group of linears reading the same input X, per input channel j: ``s_j = mean|X_j|^alpha``,
clamped at 1e-4 and divided by ``sqrt(max(s) min(s))``. The readers' weights become ``W diag(s)`` and
their input ``X diag(1/s)``, so salient channels get finer quantization steps relative to their size.
alpha is searched over ``{0, 1/grid, ..., (grid-1)/grid}`` (0, 0.05, ..., 0.95) for the least MSE of
the group's output with each reader's W replaced by ``Q(W diag(s)) diag(1/s)`` and X left as it is (Q:
that linear's weight format, any that ``QuantFormat.fake`` supports). alpha = 0 (s = 1, round to
nearest) is in the grid, so the chosen loss is never above round-to-nearest's.

Groups in each block, and the output each one's loss is measured on:

* the norm in front of attention -> q, k, v: the attention module's output, re-calling the module with
  the arguments it got in the calibration forward (rotary embeddings, masks, sliding windows as the
  model passed them);
* the norm in front of the FFN -> gate, up (GPT-2's c_fc, OPT's fc1): the FFN module's output; where the
  readers sit in no such module (OPT's fc1) the readers' own outputs, and the report says so;
* v -> o (o's output), only where v's output is as wide as o's input (not under grouped-query attention);
* up -> down (down's output), where the FFN is gated (the adapter's ``ffn_pair``).

Folds go through the family adapter: the norm's per-channel factor is divided by s in its own
parametrization (``adapter.divide_norm``: Gemma's ``1 + w``, LayerNorm's weight and bias), or the
producing linear's output rows and bias are (v rows of Phi-3's qkv_proj and GPT-2's c_attn, up rows of
Phi-3's gate_up_proj); the readers' columns are multiplied by s. With quantization off the model
computes the same function. Families without ``norm_groups`` (OLMo-2, post-norm OPT, GPT-NeoX) are
refused before any weight changes, with the adapter's reason.

Then AWQ's clipping search (``clip``): per output row and input group of the weight format (the whole
row for per-channel formats), the bound ``max|w| (1 - i/20)``, i = 0..9, whose quantized weight gives
the least error in that group's share of the output, on ``max_tokens`` sampled calibration rows of the
scaled input; q and k are skipped. The bounds clamp the weight the quantized forward uses; the fp
weight (quantization off, the SQNR reference) keeps its values.

Statistics come from the fp model one block at a time, fed the block's inputs recorded in one
calibration forward (as AutoAWQ does): mean|x| over every calibration token; the loss on the first
windows up to 4096 tokens (module outputs) or on 4096 sampled input rows (linear outputs).
Defaults: ``grid=20``, ``clip=True``, ``max_tokens=512``.

``awq+gptq`` folds AWQ's scales (without the clipping search: GPTQ chooses its own rounding), then runs
GPTQ on the scaled weights with Hessians from the scaled inputs; integer weight formats only.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from qsink.errors import QsinkError
from qsink.quant.handling.base import Handler, register
from qsink.quant.handling.gptq import GPTQ
from qsink.quant.schemes import QuantFormat

SEARCH_ROWS = 4096  # tokens of whole windows (module outputs) or sampled input rows (linear outputs) per group
CLIP_STEPS = 10  # bounds max|w| (1 - i/20), i = 0..9
BATCH = 4  # windows per forward


def awq_scale(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = x_mean^alpha`` clamped at 1e-4, divided by ``sqrt(max(s) min(s))`` (float32)."""
    s = x_mean.float().pow(alpha).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_fake(w: torch.Tensor, s: torch.Tensor, fmt: QuantFormat | None) -> torch.Tensor:
    """``Q(W diag(s)) diag(1/s)`` in float32 (W itself where the linear is not quantized)."""
    w = w.detach().float()
    return w if fmt is None else fmt.fake(w * s) / s


@torch.no_grad()
def search_scale(x_mean: torch.Tensor, linears: list[nn.Module], fmts: list[QuantFormat | None],
                 output: Callable[[], list[torch.Tensor]], grid: int = 20) -> tuple[float, torch.Tensor, float]:
    """The alpha of ``{i / grid}`` whose scales give the least MSE of ``output()`` (the group's output,
    computed with the linears' weights as they are set) when each linear's weight is replaced by
    ``Q(W diag(s)) diag(1/s)``. Returns alpha, its s and its loss over alpha = 0's; weights are restored."""
    ref = [r.float() for r in output()]
    n = sum(r.numel() for r in ref)
    originals = [lin.weight.detach().clone() for lin in linears]
    rtn = best = math.nan
    alpha, scale = 0.0, torch.ones_like(x_mean, dtype=torch.float32)
    try:
        for i in range(grid):
            s = awq_scale(x_mean, i / grid)
            for lin, w, f in zip(linears, originals, fmts):
                lin.weight.copy_(scaled_fake(w, s, f).to(w.dtype))
            loss = sum(float((o.float() - r).pow(2).sum(dtype=torch.float64)) for o, r in zip(output(), ref)) / n
            if i == 0:
                rtn = best = loss
            elif loss < best:
                best, alpha, scale = loss, i / grid, s
    finally:
        for lin, w in zip(linears, originals):
            lin.weight.copy_(w)
    return alpha, scale, best / rtn if rtn > 0 else 1.0


def _grouped(t: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., n)`` -> ``(..., n_groups, size)``, zero-padded."""
    return F.pad(t, (0, (-t.shape[-1]) % size)).reshape(*t.shape[:-1], -1, size)


def _ungrouped(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-2], -1)[..., :n]


def clip_group(fmt: QuantFormat, in_features: int) -> int:
    """The input group a clip bound covers: the format's group, else the whole row."""
    return fmt.granularity.size if fmt.granularity.kind == "group" else in_features


@torch.no_grad()
def clip_ratios(w: torch.Tensor, x: torch.Tensor, fmt: QuantFormat, steps: int = CLIP_STEPS) -> torch.Tensor:
    """Per output row and input group (``(out, n_groups)``), the ratio ``r = 1 - i/20`` (i < ``steps``) for
    which quantizing ``clamp(w, -r max|w_g|, r max|w_g|)`` gives the least mean squared error of
    ``x_g w_g^T`` over the rows of ``x``. r = 1 (no clipping) wins ties."""
    w = w.detach().float()
    size = clip_group(fmt, w.shape[1])
    W = _grouped(w, size)  # (out, G, size)
    X = _grouped(x.float(), size).transpose(0, 1)  # (G, n, size)
    amax = W.abs().amax(dim=-1, keepdim=True)
    best = torch.ones(W.shape[:2], device=w.device)
    best_err = torch.full_like(best, math.inf)
    chunk = max(1, 2**24 // (X.shape[0] * X.shape[1]))  # output rows per batched matmul
    for i in range(steps):
        r = 1 - i / 20
        d = _grouped(fmt.fake(_ungrouped(torch.clamp(W, -amax * r, amax * r), w.shape[1])), size) - W
        err = torch.cat([torch.bmm(X, d[c : c + chunk].permute(1, 2, 0)).pow(2).mean(dim=1).T
                         for c in range(0, d.shape[0], chunk)])
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best[better] = r
    return best


def clip_weight(w: torch.Tensor, ratios: torch.Tensor, size: int) -> torch.Tensor:
    """``w`` clamped per row and input group to ``ratio * max|w_g|``."""
    W = _grouped(w.detach().float(), size)
    bound = W.abs().amax(dim=-1, keepdim=True) * ratios.to(W.device)[..., None]
    return _ungrouped(torch.clamp(W, -bound, bound), w.shape[1]).to(w.dtype)


# --- one block at a time, fed the inputs recorded in the calibration forward ----------------------


class _Stop(Exception):
    """Ends a calibration forward once the last block's inputs are recorded."""


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _with_hidden(args: tuple, kwargs: dict, h) -> tuple[tuple, dict]:
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": h}
    return (h, *args[1:]), kwargs


def _first(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _block_inputs(model: nn.Module, blocks: list[nn.Module], calib) -> tuple[list[torch.Tensor], list[list[tuple]]]:
    """The first block's hidden states per batch of windows, and every block's other call arguments per batch."""
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple]] = [[] for _ in blocks]

    def record(l: int):
        def hook(module, args, kwargs):
            if l == 0:
                hidden.append(_hidden(args, kwargs))
            calls[l].append(_with_hidden(args, kwargs, None))
            if l == len(blocks) - 1:
                raise _Stop
        return hook

    handles = [b.register_forward_pre_hook(record(l), with_kwargs=True) for l, b in enumerate(blocks)]
    device = next(model.parameters()).device
    try:
        for start in range(0, calib.n_windows, BATCH):
            try:
                model(input_ids=calib.input_ids[start : start + BATCH].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden, calls


@dataclass
class _Seen:
    """What one block's linears and loss modules received on the calibration windows."""

    abs_sum: dict[str, torch.Tensor] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    rows: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    calls: dict[nn.Module, list[tuple]] = field(default_factory=dict)

    def x_mean(self, path: str) -> torch.Tensor:
        return (self.abs_sum[path] / self.count[path]).float()

    def x(self, path: str) -> torch.Tensor:
        return torch.cat(self.rows[path])


def _run_block(block: nn.Module, linears: dict[str, nn.Module], parents: list[nn.Module], hidden: list[torch.Tensor],
               calls: list[tuple], total_rows: int, gen: torch.Generator) -> tuple[list[torch.Tensor], _Seen]:
    """Run ``block`` on each batch's hidden states, recording its linears' inputs (mean |x| over every row, a
    sample of rows) and the calls of ``parents`` on the first windows; returns the block's outputs."""
    seen = _Seen(calls={p: [] for p in parents})
    keep = [True]

    def on_linear(path: str):
        def hook(module, args):
            flat = args[0].detach().reshape(-1, args[0].shape[-1])
            seen.abs_sum[path] = seen.abs_sum.get(path, 0) + flat.abs().sum(dim=0, dtype=torch.float64)
            seen.count[path] = seen.count.get(path, 0) + flat.shape[0]
            k = min(flat.shape[0], math.ceil(SEARCH_ROWS * flat.shape[0] / total_rows))
            idx = torch.randperm(flat.shape[0], generator=gen)[:k].to(flat.device)
            seen.rows.setdefault(path, []).append(flat[idx].float())
        return hook

    def on_parent(module, args, kwargs):
        if keep[0]:
            seen.calls[module].append((args, kwargs))

    handles = [lin.register_forward_pre_hook(on_linear(p)) for p, lin in linears.items()]
    handles += [p.register_forward_pre_hook(on_parent, with_kwargs=True) for p in parents]
    out, tokens = [], 0
    try:
        for h, (args, kwargs) in zip(hidden, calls):
            keep[0] = tokens < SEARCH_ROWS
            args, kwargs = _with_hidden(args, kwargs, h)
            out.append(_first(block(*args, **kwargs)))
            tokens += h.numel() // h.shape[-1]
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


@dataclass
class _Group:
    """Linears reading one input, what produces that input, and the output their loss is measured on."""

    name: str
    readers: tuple[str, ...]  # linear paths whose columns are multiplied by s
    x_path: str  # the linear whose recorded input is the group's input
    parent: nn.Module | None  # whose output the loss is on; None: the readers' outputs
    loss_on: str
    fold: Callable[[torch.Tensor], None]  # divides the producer of the input by s


def _output(g: _Group, lins: list[nn.Module], seen: _Seen) -> Callable[[], list[torch.Tensor]]:
    """The group's output on the recorded calibration inputs, with the weights as they are set."""
    if g.parent is not None:
        calls = seen.calls[g.parent]
        return lambda: [_first(g.parent(*args, **kwargs)) for args, kwargs in calls]
    x = seen.x(g.x_path)
    return lambda: [F.linear(x, lin.weight.float()) for lin in lins]


def _divide_rows(lin: nn.Module, rows: slice, s: torch.Tensor) -> None:
    w = lin.weight[rows]
    w.copy_((w.double() / s.double()[:, None]).to(w.dtype))
    if lin.bias is not None:
        b = lin.bias[rows]
        b.copy_((b.double() / s.double()).to(b.dtype))


def _multiply_columns(lin: nn.Module, s: torch.Tensor) -> None:
    lin.weight.copy_((lin.weight.double() * s.double()).to(lin.weight.dtype))


@register
class AWQ(Handler):
    name = "awq"
    inputs_unchanged = False  # rotates / scales the linears' inputs: its own calibration pass
    description = ("activation-aware per-channel weight scales searched on the group's output, folded into norms "
                   "and linears, then a clipping search (arXiv 2306.00978); any weight format")
    needs_calibration = True

    def __init__(self, grid: int = 20, clip: bool = True, max_tokens: int = 512):
        if int(grid) < 1 or int(max_tokens) < 1:
            raise QsinkError(f"awq needs grid >= 1 and max_tokens >= 1 (got {grid}, {max_tokens}); the defaults are 20 and 512")
        self.grid, self.clip, self.max_tokens = int(grid), bool(clip), int(max_tokens)
        self.groups: dict[str, dict] = {}
        self.loss_on: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.clips: dict[str, torch.Tensor] = {}
        self.search_s = 0.0

    def check(self, scheme) -> None:
        if scheme.weight is None:
            raise QsinkError(f"{self.name} protects weight quantization, and {scheme.name} quantizes no weights; "
                             "use it with a scheme that quantizes weights (w4a16, w4a8, nf4, ...)")

    def check_model(self, adapter) -> None:
        adapter.require_rewrites(self.name)  # no norm to fold into (OLMo-2, post-norm OPT, GPT-NeoX)

    @torch.no_grad()
    def prepare(self, model, adapter, calib, scheme) -> None:
        adapter.require_rewrites(self.name)
        t0 = time.perf_counter()
        blocks = adapter.blocks(model)
        hidden, calls = _block_inputs(model, blocks, calib)
        gen = torch.Generator().manual_seed(0)
        for l, block in enumerate(blocks):
            linears = adapter.linears(block)
            fmts = {p: scheme.weight_format_for(p, l, len(blocks), lin.weight.shape[1]) for p, lin in linears.items()}
            groups = self._groups(block, adapter)
            hidden, seen = _run_block(block, linears, [g.parent for g in groups if g.parent is not None], hidden,
                                      calls[l], calib.input_ids.numel(), gen)
            calls[l] = []
            scales = self._search(l, groups, linears, fmts, seen)
            if self.clip:
                self._search_clips(l, block, adapter, linears, fmts, seen, scales)
        self.search_s = time.perf_counter() - t0

    def _groups(self, block: nn.Module, adapter) -> list[_Group]:
        groups = []
        for norm_path, readers in adapter.norm_groups:
            parent, loss_on = None, "outputs of " + ", ".join(readers)
            for prefix, module in ((adapter.attn, adapter.attention(block)), (adapter.mlp, adapter.ffn(block))):
                if prefix and all(r.startswith(prefix + ".") for r in readers):
                    parent, loss_on = module, f"{prefix} output"
                    break
            groups.append(_Group(norm_path, tuple(readers), readers[0], parent, loss_on,
                                 partial(adapter.divide_norm, adapter.module(block, norm_path))))
        for pair in (adapter.value_pair, adapter.ffn_pair):
            if pair is None:
                continue
            (producer, rows), reader = adapter.rows(block, pair[0]), adapter.module(block, pair[1])
            name = f"{pair[0]}->{pair[1]}"
            width = len(range(producer.out_features)[rows])
            if width != reader.in_features:
                self.skipped[name] = (f"{pair[0]} gives {width} channels and {pair[1]} reads {reader.in_features} "
                                      "(grouped-query attention)")
                continue
            groups.append(_Group(name, (pair[1],), pair[1], None, f"{pair[1]} output", partial(_divide_rows, producer, rows)))
        return groups

    def _search(self, l: int, groups: list[_Group], linears: dict, fmts: dict, seen: _Seen) -> dict[str, torch.Tensor]:
        """Search every group's scales on the block's fp weights, then fold them; returns s per reader."""
        chosen = []
        for g in groups:
            lins, fm = [linears[r] for r in g.readers], [fmts[r] for r in g.readers]
            if all(f is None for f in fm):
                continue
            x_mean = seen.x_mean(g.x_path).to(lins[0].weight.device)
            alpha, s, rel = search_scale(x_mean, lins, fm, _output(g, lins, seen), self.grid)
            self.groups[f"{l}.{g.name}"] = {"alpha": round(alpha, 4), "loss_vs_rtn": rel}
            self.loss_on[g.name] = g.loss_on
            chosen.append((g, s))
        scales = {}
        for g, s in chosen:
            g.fold(s)
            for r in g.readers:
                _multiply_columns(linears[r], s)
                scales[r] = s
        return scales

    def _search_clips(self, l: int, block: nn.Module, adapter, linears: dict, fmts: dict, seen: _Seen,
                      scales: dict[str, torch.Tensor]) -> None:
        qk = [(lin, rows) for kind, (lin, rows) in adapter.qkv_outputs(block).items() if kind in ("q", "k")]
        for path, lin in linears.items():
            skip = [rows for m, rows in qk if m is lin]
            if fmts[path] is None or slice(None) in skip:
                continue
            x = seen.x(path)
            x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(l))[: self.max_tokens].to(x.device)]
            if path in scales:
                x = x / scales[path]
            ratios = clip_ratios(lin.weight, x, fmts[path])
            for rows in skip:
                ratios[rows] = 1.0
            if float(ratios.min()) < 1:
                self.clips[f"{l}.{path}"] = ratios

    @torch.no_grad()
    def after_calibration(self, qlinears: dict) -> None:
        for name, ratios in self.clips.items():
            q = qlinears[name]
            q.weight_q = q.weight_fmt.fake(clip_weight(q.weight_fp, ratios, clip_group(q.weight_fmt, q.in_features)))

    def report(self) -> dict:
        alphas = [g["alpha"] for g in self.groups.values()]
        return {"grid": self.grid, "clip": self.clip, "max_tokens": self.max_tokens,
                "share_scaled": sum(a > 0 for a in alphas) / len(alphas) if alphas else 0.0,
                "alpha_counts": dict(sorted(Counter(alphas).items())),
                "n_clipped_linears": len(self.clips), "loss_on": self.loss_on, "skipped": self.skipped,
                "search_s": self.search_s, "groups": self.groups}


@register
class AWQGPTQ(Handler):
    """AWQ's scales folded in, then GPTQ on the scaled weights (Hessians from the scaled inputs)."""

    name = "awq+gptq"
    inputs_unchanged = False  # rotates / scales the linears' inputs: its own calibration pass
    description = "awq's scales (no clipping search), then GPTQ on the scaled weights; integer weights"
    needs_calibration = True

    def __init__(self, grid: int = 20, damp: float = 0.01, block: int = 128):
        self.awq, self.gptq = AWQ(grid=grid, clip=False), GPTQ(damp=damp, block=block)
        self.awq.name = self.name  # refusals name this method

    def check(self, scheme) -> None:
        self.awq.check(scheme)
        self.gptq.check(scheme)

    def check_model(self, adapter) -> None:
        self.awq.check_model(adapter)

    def prepare(self, model, adapter, calib, scheme) -> None:
        self.awq.prepare(model, adapter, calib, scheme)

    def install(self, model, ctx) -> list:
        return self.gptq.install(model, ctx)

    def after_calibration(self, qlinears: dict) -> None:
        self.gptq.after_calibration(qlinears)

    def report(self) -> dict:
        return {"awq": self.awq.report(), "gptq": self.gptq.report()}
