"""Rendering a profile's findings as terminal tables and lines."""

from __future__ import annotations

from rich.table import Table

from qsink.cli.common import stdout


def print_vocab_scan(v: dict) -> None:
    stdout.print(f"vocabulary scan ({v['n_scanned']:,} of {v['vocab_size']:,} items at position 0, layers {v['layers']}): "
              f"{v['n_spike']:,} spike ({100 * v['fraction_spike']:.2f} %), {v['n_exceptions']:,} do not; "
              f"{v['wall_s']:.0f} s", highlight=False, markup=False)
    if v["exceptions"]:
        stdout.print("exceptions: " + ", ".join(repr(e["token"]) for e in v["exceptions"][:20])
                  + (" ..." if v["n_exceptions"] > 20 else ""), highlight=False, markup=False)
    if v["delimiters"]:
        stdout.print("delimiters at position " + str(v["delimiters"][0]["position"]) + ": "
                  + ", ".join(f"{d['token']!r} {'spike' if d['spike'] else 'no'} ({d['peak']:.3g})" for d in v["delimiters"]),
                  highlight=False, markup=False)


def print_attribution(a: dict) -> None:
    table = Table(title=f"step-up attribution on position {a['position']} (window {a['window']})")
    for col in ("channel", "injected by", "Δ|h|", "removed by", "Δ|h| "):
        table.add_column(col, justify="right")
    for c in a["channels"]:
        inj, rem = c["injector"], c["remover"]
        table.add_row(str(c["channel"]), f"block {inj['block']} {inj['sublayer']}", f"{inj['delta_abs']:+.4g}",
                      f"block {rem['block']} {rem['sublayer']}" if rem else "-", f"{rem['delta_abs']:+.4g}" if rem else "-")
    stdout.print(table)
    q = a.get("quadratic_form")
    if q and "error" not in q:
        sp, ty = q["spike_channel"], q["typical_channels"]
        stdout.print(f"FFN of block {q['block']}, channel {q['channel']} as a quadratic form ({q['approximation']}): "
                  f"lambda_1 {sp['lambda_1']:.4g}, |lambda_1/lambda_2| {sp['ratio']:.3g}, |cos(input, v_1)| {sp['cos_input_leading']:.3f}; "
                  f"typical channels (median of {ty['n']}): |lambda_1| {ty['median_abs_lambda_1']:.3g}, ratio {ty['median_ratio']:.3g}, "
                  f"|cos| {ty['median_cos_input_leading']:.3f}", highlight=False, markup=False)


def print_profile(name: str, doc: dict) -> None:
    s = doc["summary"]
    table = Table(title=f"{name}: residual stream per layer ({doc['n_windows']} windows of {doc['data']['ctx']})")
    for col in ("layer", "top-1", "median", "ratio", "pos:ch", "kurt", "massive", "alpha"):
        table.add_column(col, justify="right")
    alpha = doc["attention"]["alpha_mean_per_layer"] if doc.get("attention") else None
    for d in doc["layers"]:
        t = d["top"][0]
        a = f"{alpha[d['layer'] - 1]:.2f}" if alpha and d["layer"] > 0 else "-"
        table.add_row(str(d["layer"]), f"{d['top1']:.4g}", f"{d['median']:.3g}", f"{d['top1_median']:.4g}",
                      f"{t['position']}:{t['channel']}", f"{d['kurtosis_mean']:.1f}", str(d["n_massive"]), a)
    stdout.print(table)
    stdout.print(
        f"spike magnitude {s['spike_magnitude']:.4g} (layer {s['spike_layer']}), top-1/median up to {s['top1_median_max']:.4g}; "
        f"massive activations: {'yes' if s['has_massive'] else 'none'}"
        + (f", channels {s['spike_channels']}, layers {s['step_up_layer']}..{(s['step_down_layer'] or doc['n_layers'] + 1) - 1}, "
           f"tokens {', '.join(s['spike_tokens'])}" if s["has_massive"] else ""),
        highlight=False, markup=False,
    )
    if s["sink_ratio"] is not None:
        stdout.print(f"sink ratio {s['sink_ratio']:.3f} (heads with alpha > {doc['settings']['sink_eps']}), mean alpha {s['alpha_mean']:.3f}; "
                  f"secondary sinks: {len(doc['attention']['secondary_sinks'])} heads", highlight=False, markup=False)
    nc = s["near_constancy"]
    stdout.print(f"max kurtosis {s['kurtosis_max']:.4g}; linear-input absmax max/median up to {s['linear_input_ratio_max']:.4g}; "
              f"near-constancy of spike tokens {'-' if nc is None else f'{nc:.4f}'}", highlight=False, markup=False)


def print_gradient_sinks(g: dict) -> None:
    stdout.print(f"gradient-sink ratio at position {g['position']} ({g['n_windows']} windows): median over layers "
                 + ", ".join(f"{k} {g[k]['r_gs_median']:.3g}" for k in ("attn_in", "q", "k", "v") if k in g)
                 + "; per layer (v): " + " ".join(f"{r:.3g}" for r in g.get("v", g["attn_in"])["r_gs"]),
                 highlight=False, markup=False)
