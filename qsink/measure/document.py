"""The profile: a JSON-able result of one profiling pass, and its summary for leaderboards.

Schema ``qsink.profile/1``; the plots are drawn from this document alone.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import torch

PROFILE_SCHEMA = "qsink.profile/1"
MAX_NEAR_CONSTANCY_VECTORS = 64  # per layer; pairwise cosines are O(n^2)


@dataclass
class Profile:
    data: dict

    @property
    def summary(self) -> dict:
        return self.data["summary"]

    def to_dict(self) -> dict:
        return self.data

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        if d.get("schema") != PROFILE_SCHEMA:
            raise ValueError(f"not a qsink profile (schema {d.get('schema')!r})")
        return cls(d)

    @classmethod
    def build(cls, col, n_attn: int, wall_s: float) -> "Profile":
        tok, ids = col.tok, col.windows.input_ids

        def text(window: int, pos: int) -> str:
            return tok.decode([int(ids[window, pos])])

        layers = []
        for l, acc in enumerate(col.layers):
            median = statistics.median(acc.medians)
            top1 = acc.top[0][0]
            layers.append({
                "layer": l,
                "median": median,
                "top1": top1,
                "top1_median": top1 / median if median > 0 else math.inf,
                "inf_norm": acc.inf_norm,
                "kurtosis_mean": acc.kurt_sum / acc.kurt_n,
                "kurtosis_max": acc.kurt_max,
                "excess_kurtosis_mean": acc.kurt_sum / acc.kurt_n - 3.0,
                "n_massive": acc.n_massive,
                "top": [{"value": v, "window": w, "position": p, "token": text(w, p), "channel": c} for v, w, p, c in acc.top],
            })

        # massive activations grouped by channel, by position, and by token (positions > 0)
        chan = defaultdict(lambda: {"layers": set(), "max": 0.0, "count": 0})
        pos = defaultdict(lambda: {"layers": set(), "windows": set(), "max": 0.0})
        toks = defaultdict(lambda: {"layers": set(), "windows": set(), "positions": set(), "max": 0.0})
        for layer, w, p, c, v in col.massive:
            for d in (chan[c], pos[p]) + ((toks[int(ids[w, p])],) if p > 0 else ()):
                d["layers"].add(layer)
                d["max"] = max(d["max"], v)
            chan[c]["count"] += 1
            pos[p]["windows"].add(w)
            if p > 0:
                toks[int(ids[w, p])]["windows"].add(w)
                toks[int(ids[w, p])]["positions"].add(p)
        n_win = col.windows.n_windows
        channels = sorted(({"channel": c, "layers": sorted(d["layers"]), "max": d["max"], "count": d["count"]} for c, d in chan.items()),
                          key=lambda d: -d["max"])
        positions = sorted(({"position": p, "windows": len(d["windows"]), "layers": sorted(d["layers"]), "max": d["max"]}
                            for p, d in pos.items()), key=lambda d: (-d["windows"], -d["max"]))
        tokens = sorted(({"token": tok.decode([t]), "token_id": t, "windows": len(d["windows"]), "n_positions": len(d["positions"]),
                          "layers": sorted(d["layers"]), "max": d["max"]} for t, d in toks.items()),
                        key=lambda d: (-d["windows"], -d["max"]))
        spike_tokens = [f"position 0 ({d['windows']}/{n_win} windows)" for d in positions if d["position"] == 0]
        spike_tokens += [f"{d['token']!r} ({d['windows']}/{n_win} windows)" for d in tokens[:6]]
        plateau = sorted({layer for layer, *_ in col.massive})
        step_up = plateau[0] if plateau else None
        step_down = plateau[-1] + 1 if plateau and plateau[-1] + 1 <= col.L else None
        plot_layer = plateau[len(plateau) // 2] if plateau else max(range(len(layers)), key=lambda i: layers[i]["top1_median"])

        # attention sinks
        attention = None
        if col.alpha_sum is not None:
            alpha = (col.alpha_sum / n_attn).tolist()
            mass = (col.keymass_sum / n_attn).tolist()
            eps = col.s.sink_eps
            heads = [(l, h, a) for l, row in enumerate(alpha) for h, a in enumerate(row)]
            secondary = []
            for l, row in enumerate(mass):
                for h, m in enumerate(row):
                    if m > eps:
                        best, w, p = col.keymass_best[(l, h)]
                        secondary.append({"layer": l, "head": h, "mean_mass": m, "example_window": w, "example_position": p,
                                          "example_token": text(w, p)})
            attention = {
                "method": f"eager attention weights on the first {n_attn} window(s), reduced per layer inside a hook",
                "n_windows": n_attn,
                "alpha": alpha,
                "alpha_mean_per_layer": [sum(r) / len(r) for r in alpha],
                "sink_heads": [{"layer": l, "head": h, "alpha": a} for l, h, a in heads if a > eps],
                "sink_ratio": sum(a > eps for *_, a in heads) / len(heads),
                "secondary_sinks": secondary,
            }

        # what a quantizer sees: per-channel absmax of each linear's input
        linear_inputs = []
        for (l, name), m in sorted(col.linear_absmax.items()):
            med = float(m.median())
            top = m.topk(min(4, m.numel()))
            linear_inputs.append({"layer": l, "linear": name, "absmax_max": float(m.max()), "absmax_median": med,
                                  "ratio": float(m.max()) / med if med > 0 else math.inf,
                                  "top_channels": top.indices.tolist(), "top_values": top.values.tolist()})

        # near-constancy of spike tokens' post-norm vectors across windows
        near = {}
        for l, items in sorted(col.post_norm.items()):
            items = items[:MAX_NEAR_CONSTANCY_VECTORS]
            if len({w for w, *_ in items}) < 2:
                continue
            vecs = torch.nn.functional.normalize(torch.stack([v for *_, v in items]), dim=-1)
            cos = vecs @ vecs.T
            win = torch.tensor([w for w, *_ in items])
            other = win[:, None] != win[None, :]
            near[l] = float(cos[other].mean())
        near_mean = sum(near.values()) / len(near) if near else None

        spike_layer = max(range(len(layers)), key=lambda i: layers[i]["top1"])
        summary = {
            "spike_magnitude": layers[spike_layer]["top1"],
            "spike_layer": spike_layer,
            "top1_median_max": max(x["top1_median"] for x in layers),
            "kurtosis_max": max(x["kurtosis_max"] for x in layers),
            "kurtosis_mean_max": max(x["kurtosis_mean"] for x in layers),
            "inf_norm_max": max(x["inf_norm"] for x in layers),
            "has_massive": bool(plateau),
            "n_massive": sum(x["n_massive"] for x in layers),
            "spike_channels": [c["channel"] for c in channels[:8]],
            "spike_tokens": spike_tokens,
            "step_up_layer": step_up,
            "step_down_layer": step_down,
            "sink_ratio": attention["sink_ratio"] if attention else None,
            "alpha_mean": (sum(attention["alpha_mean_per_layer"]) / len(attention["alpha_mean_per_layer"])) if attention else None,
            "near_constancy": near_mean,
            "linear_input_ratio_max": max((x["ratio"] for x in linear_inputs), default=None),
        }
        return cls({
            "schema": PROFILE_SCHEMA,
            "settings": col.s.to_dict(),
            "definitions": {
                "residual": "h_l = hidden state after block l; h_0 = embedding output",
                "median": "median over windows of each window's median |h_l| over tokens and channels",
                "massive": f"|h| > {col.s.massive_abs} and |h| > {col.s.massive_ratio} x the window's layer median (Sun et al. 2024, arXiv 2402.17762)",
                "kurtosis": "E[(x-mu)^4]/sigma^4 of a token's hidden vector over channels (arXiv 2306.12929)",
                "alpha": "mean over query positions i>=1 of the attention weight on key 0 (arXiv 2410.10781); sink if alpha > eps",
                "secondary_sink": "a head whose mean attention from later queries on one key k in [1, T/2] exceeds eps",
                "near_constancy": "mean pairwise cosine across windows of spike tokens' post-norm vectors (input of attention)",
                "step_up/step_down": "first layer holding a massive activation / first layer after the last one that holds one",
            },
            "n_layers": col.L,
            "n_windows": col.windows.n_windows,
            "data": col.windows.describe(),
            "layers": layers,
            "massive": {"channels": channels, "positions": positions, "tokens": tokens, "plateau_layers": plateau, "step_up_layer": step_up,
                        "step_down_layer": step_down, "stored_hits": len(col.massive)},
            "attention": attention,
            "linear_inputs": linear_inputs,
            "near_constancy": {"per_layer": {str(k): v for k, v in near.items()}, "mean": near_mean},
            "plot_layer": plot_layer,
            "plot_layer_channel_absmax": col.layers[plot_layer].channel_absmax.tolist(),
            "summary": summary,
            "timing": {"wall_s": wall_s, "tokens_per_s": col.windows.n_windows * col.windows.ctx / wall_s},
        })
