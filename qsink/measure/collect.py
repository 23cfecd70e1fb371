"""One pass over N windows with forward hooks: massive activations, sinks, outlier statistics.

What is measured (all per layer; ``h_l`` is the residual stream after block ``l``, ``h_0`` the
residual stream entering block 0, as ``output_hidden_states[0]``: the embedding output, or the sum with
learned positions where the adapter says so, GPT-2 and OPT):

* top-k ``|h_l|`` with window, position, token and channel; the median ``|h_l|`` (the median of
  each window's median, so memory stays bounded); top-1 / median; the largest ``|h_l|`` (the
  infinity norm of the block output);
* massive activations (see :mod:`qsink.measure.stats`) against each window's own layer median:
  which channels and which (position, token) pairs hold them, over which layers;
* token kurtosis over channels, mean and max over tokens;
* the per-channel absmax of the input of every linear layer in the blocks (what an activation
  quantizer sees), and its max / median per linear;
* attention sinks: alpha per layer and head, and heads whose attention mass goes to one later key
  position (k in [1, T/2], mean over the queries after it) above the same epsilon. These need the
  attention weights, so the first ``attn_windows`` windows run with eager attention (the model's
  own implementation is restored afterwards); weights are reduced inside the hook, one layer at a
  time, never kept;
* near-constancy: the mean pairwise cosine, across different windows, of the post-norm vectors
  (the output of the norm in front of attention; for a family without one, OLMo-2, what attention
  reads) of spike tokens, per plateau layer.

Hooks are always removed, also when the pass fails. Non-finite activations raise an error naming
the layer, window, position and token; they are never folded into statistics.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from qsink.data.windows import Windows
from qsink.errors import QsinkError
from qsink.measure import stats
from qsink.measure.attention import capture_attention
from qsink.measure.document import Profile
from qsink.models.adapter import adapter_for
from qsink.measure.options import ProfileSettings

MAX_MASSIVE_PER_LAYER_WINDOW = 256  # cap on stored (position, channel) hits; the count stays exact


@dataclass
class _LayerAcc:
    top: list = field(default_factory=list)  # (value, window, pos, channel)
    medians: list = field(default_factory=list)
    inf_norm: float = 0.0
    kurt_sum: float = 0.0
    kurt_n: int = 0
    kurt_max: float = 0.0
    channel_absmax: torch.Tensor | None = None
    n_massive: int = 0


class _Collector:
    def __init__(self, model, tokenizer, windows: Windows, s: ProfileSettings):
        self.ad = adapter_for(model)
        self.model, self.tok, self.windows, self.s = model, tokenizer, windows, s
        self.blocks = self.ad.blocks(model)
        self.L = len(self.blocks)
        self.layers = [_LayerAcc() for _ in range(self.L + 1)]
        self.massive: list[tuple] = []  # (layer, window, pos, channel, value)
        self.flagged: dict[int, torch.Tensor] = {}  # layer -> positions flagged in the current window
        self.post_norm: dict[int, list] = defaultdict(list)  # layer -> [(window, pos, vector)]
        self.alpha_sum = None  # (L, H)
        self.alpha_n = 0
        self.keymass_best: dict[tuple[int, int], tuple[float, int, int]] = {}  # (l, h) -> (mass, window, pos)
        self.keymass_sum = None
        self.linear_absmax: dict[tuple[int, str], torch.Tensor] = {}
        self.window = 0
        self.want_attn = False

    # --- hooks -------------------------------------------------------------------------------
    def residual(self, layer: int, h: torch.Tensor) -> None:
        h = h.detach()
        if not torch.isfinite(h).all():
            b, t = [int(i) for i in (~torch.isfinite(h)).any(dim=-1).nonzero()[0]]
            tok = self.tok.decode([int(self.ids[b, t])])
            raise QsinkError(
                f"non-finite activation in layer {layer} (residual stream), window {self.window + b}, "
                f"position {t}, token {tok!r}; the model is numerically broken, statistics were not computed"
            )
        acc = self.layers[layer]
        a = h.float().abs()  # (B, T, D)
        acc.inf_norm = max(acc.inf_norm, float(a.max()))
        cmax = a.amax(dim=(0, 1))
        acc.channel_absmax = cmax if acc.channel_absmax is None else torch.maximum(acc.channel_absmax, cmax)
        k = stats.token_kurtosis(h)  # (B, T)
        acc.kurt_sum += float(k.double().sum())
        acc.kurt_n += k.numel()
        acc.kurt_max = max(acc.kurt_max, float(k.max()))
        flagged = []
        for b in range(a.shape[0]):
            med = float(a[b].median())
            acc.medians.append(med)
            vals, coords = stats.topk_abs(a[b], self.s.top_k)
            acc.top += [(float(v), self.window + b, int(p), int(c)) for v, (p, c) in zip(vals, coords.tolist())]
            hits = stats.massive_mask(a[b], med, self.s.massive_abs, self.s.massive_ratio).nonzero()
            acc.n_massive += len(hits)
            for p, c in hits[:MAX_MASSIVE_PER_LAYER_WINDOW].tolist():
                self.massive.append((layer, self.window + b, p, c, float(a[b, p, c])))
            flagged.append(hits[:, 0].unique() if len(hits) else hits.new_zeros(0))
        acc.top = sorted(acc.top, reverse=True)[: self.s.top_k]
        self.flagged[layer] = flagged

    def norm_output(self, layer: int, x: torch.Tensor) -> None:
        for b, positions in enumerate(self.flagged.get(layer, [])):
            for p in positions.tolist():
                self.post_norm[layer].append((self.window + b, p, x[b, p].detach().float().clone()))

    def attention(self, layer: int, weights: torch.Tensor | None) -> None:
        if not self.want_attn:
            return
        if weights is None:
            raise QsinkError(f"layer {layer}'s attention returned no weights under eager attention, so its sink "
                             f"statistics cannot be measured (a sink ratio of 0 would be made up); pass "
                             "--attn-windows 0 to profile without them")
        alpha = stats.sink_alpha(weights)  # (B, H)
        mass = stats.key_mass(weights)  # (B, H, T)
        T = mass.shape[-1]
        window_mass = mass[:, :, 1 : T // 2 + 1]
        best, where = window_mass.max(dim=-1)  # (B, H)
        if self.alpha_sum is None:
            H = alpha.shape[1]
            self.alpha_sum = torch.zeros(self.L, H, dtype=torch.float64)
            self.keymass_sum = torch.zeros(self.L, H, dtype=torch.float64)
        self.alpha_sum[layer] += alpha.double().sum(dim=0).cpu()
        self.keymass_sum[layer] += best.double().sum(dim=0).cpu()
        for b in range(best.shape[0]):
            for h in range(best.shape[1]):
                m = float(best[b, h])
                if m > self.keymass_best.get((layer, h), (-1.0,))[0]:
                    self.keymass_best[(layer, h)] = (m, self.window + b, int(where[b, h]) + 1)

    def linear_input(self, layer: int, name: str, x: torch.Tensor) -> None:
        m = x.detach().float().abs().amax(dim=tuple(range(x.dim() - 1)))
        key = (layer, name)
        self.linear_absmax[key] = m if key not in self.linear_absmax else torch.maximum(self.linear_absmax[key], m)


@contextlib.contextmanager
def _hooks(col: _Collector):
    handles = []
    ad = col.ad
    try:
        handles.append(ad.hook_h0(col.model, lambda h: col.residual(0, h)))
        for l, block in enumerate(col.blocks):
            handles.append(block.register_forward_hook(
                lambda m, i, o, l=l: col.residual(l + 1, o[0] if isinstance(o, tuple) else o)))
            handles.append(ad.hook_attention_input(block, lambda x, l=l: col.norm_output(l, x)))
            for name, lin in ad.linears(block).items():
                handles.append(lin.register_forward_pre_hook(lambda m, args, l=l, name=name: col.linear_input(l, name, args[0])))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def profile(
    model,
    tokenizer,
    windows: Windows,
    settings: ProfileSettings | None = None,
    batch_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> Profile:
    """Profile ``model`` on ``windows`` in one pass.

    Example:
        >>> p = profile(model, tok, make_windows(tok, text, 512, 16 * 512))  # doctest: +SKIP
        >>> p.summary["spike_magnitude"], p.summary["sink_ratio"]            # doctest: +SKIP
    """
    s = settings or ProfileSettings()
    col = _Collector(model, tokenizer, windows, s)
    device = next(model.parameters()).device
    n_attn = windows.n_windows if s.attn_windows is None else min(s.attn_windows, windows.n_windows)
    t0 = time.perf_counter()
    with _hooks(col):
        start = 0
        while start < windows.n_windows:
            stop = min(start + batch_size, windows.n_windows)
            if start < n_attn:
                stop = min(stop, n_attn)  # a batch is either all-eager or all-fast
            col.window, col.want_attn = start, start < n_attn
            col.ids = windows.input_ids[start:stop]
            col.flagged = {}
            with capture_attention(model, col.attention) if col.want_attn else contextlib.nullcontext():
                model(input_ids=col.ids.to(device), use_cache=False)
            if on_batch:
                on_batch(stop - start)
            start = stop
    wall = time.perf_counter() - t0
    return Profile.build(col, n_attn=n_attn, wall_s=wall)
