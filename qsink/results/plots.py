"""Leaderboard plots (PNG): quantization error against spike magnitude, and a model x scheme heatmap."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from qsink.plotting import MARKERS, plt, save_figure
LABELS = {"delta_ppl_pct": "Δppl %", "delta_ppl": "Δppl", "spike_magnitude": "spike magnitude (max |h|)"}


def _label(col: str) -> str:
    return LABELS.get(col, col.replace("_", " "))


def plot_delta_vs_spike(df: pd.DataFrame, path: Path, target: str = "delta_ppl_pct") -> Path | None:
    """One panel per quantized scheme: ``target`` against spike magnitude (log x), one point per model,
    the outlier-handling method as the marker."""
    ok = df[(df["status"] == "ok") & (df["scheme"] != "fp")].dropna(subset=[target, "spike_magnitude"]) \
        if {"spike_magnitude", target} <= set(df.columns) else df.iloc[0:0]
    if ok.empty:
        return None
    schemes = sorted(ok["scheme"].unique())
    handlings = sorted(ok["handling"].unique(), key=lambda h: (h != "none", h))
    cols = min(3, len(schemes))
    rows = math.ceil(len(schemes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, scheme in zip(axes.flat, schemes):
        g = ok[ok["scheme"] == scheme]
        for i, h in enumerate(handlings):
            gh = g[g["handling"] == h]
            if not gh.empty:
                ax.scatter(gh["spike_magnitude"], gh[target], marker=MARKERS[i % len(MARKERS)], label=h, alpha=0.8)
        for _, r in g[g["handling"] == handlings[0]].iterrows():
            ax.annotate(str(r["model"])[:18], (r["spike_magnitude"], r[target]), fontsize=6, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        if (g[target] > 0).all() and g[target].max() / max(g[target].min(), 1e-9) > 50:
            ax.set_yscale("log")
        ax.set_title(scheme, fontsize=9)
        ax.set_xlabel(_label("spike_magnitude"), fontsize=8)
        ax.set_ylabel(_label(target), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(schemes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, title="handling", title_fontsize=7)
    fig.suptitle(f"{_label(target)} vs spike magnitude, one point per model", fontsize=10)
    return save_figure(fig, path)


def plot_heatmap(df: pd.DataFrame, path: Path, target: str = "delta_ppl_pct", handling: str = "none",
                 models: list[str] | None = None, schemes: list[str] | None = None) -> Path | None:
    """Model x scheme matrix of ``target`` for one handling method, colour on a log scale, values written in;
    rows and columns in the given orders (alphabetical otherwise)."""
    ok = df[(df["status"] == "ok") & (df["scheme"] != "fp") & (df["handling"] == handling)]
    if ok.empty or target not in ok.columns:
        return None
    table = ok.pivot_table(index="model", columns="scheme", values=target, aggfunc="first")
    if models:
        table = table.reindex([m for m in models if m in table.index])
    if schemes:
        table = table[[s for s in schemes if s in table.columns]]
    from matplotlib.colors import SymLogNorm

    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 1.0 * table.shape[1]), max(3.0, 1.4 + 0.45 * table.shape[0])))
    vals = table.to_numpy(dtype=float)
    finite = vals[~pd.isna(vals)]
    vmax = max(float(abs(finite).max()) if finite.size else 1.0, 1.0)
    im = ax.imshow(vals, cmap="magma_r", norm=SymLogNorm(linthresh=1.0, vmin=min(0.0, float(finite.min()) if finite.size else 0), vmax=vmax),
                   aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = vals[i, j]
            if not pd.isna(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > vmax ** 0.5 else "black")
    cbar = fig.colorbar(im, ax=ax, label=_label(target))
    cbar.ax.tick_params(labelsize=7)
    ax.set_title(f"{_label(target)} by model and scheme (handling: {handling})", fontsize=10)
    return save_figure(fig, path)


def _agreement_cells(records: list[dict]) -> dict[str, list[dict]]:
    """Quantized ok records that carry agreement statistics, by model, in the records' order."""
    out: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok" and isinstance(r.get("metrics", {}).get("agreement"), dict):
            out.setdefault(r["config"]["model"]["name"], []).append(r)
    return out


def _cell_label(r: dict) -> str:
    h = r["identity"].get("handling", "none")
    return r["identity"]["scheme"] + ("" if h == "none" else f"+{h}")


def plot_kld_distribution(records: list[dict], path: Path) -> Path | None:
    """Per model, the distribution of per-token KL divergence (fp || quantized) of each cell: the share
    of positions in each log10 bin (positions below the first bin, exact agreement included, are left
    out and counted in the legend)."""
    cells = _agreement_cells(records)
    if not cells:
        return None
    fig, axes = plt.subplots(len(cells), 1, figsize=(7.5, 3.2 * len(cells)), squeeze=False)
    for ax, (model, recs) in zip(axes[:, 0], cells.items()):
        for i, r in enumerate(recs):
            a = r["metrics"]["agreement"]
            h = a["kld_histogram"]
            edges = [10 ** e for e in h["log10_edges"]]
            share = [c / a["n"] for c in h["counts"]]
            ax.stairs(share, edges, label=f"{_cell_label(r)} (mean {a['kld']['mean']:.3g}; {h['below']} below)",
                      linestyle=("-", "--", ":", "-.")[i // 10 % 4])
        ax.set_xscale("log")
        ax.set_xlabel("per-token KLD(fp || quantized), nats", fontsize=8)
        ax.set_ylabel("share of positions", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Where the quantized next-token distribution departs from fp", fontsize=10)
    return save_figure(fig, path)


def plot_kld_by_kind(records: list[dict], path: Path) -> Path | None:
    """Per model, mean KLD on massive-activation positions, the sink position, delimiters and all other
    positions, one group of bars per cell; the model's spike magnitude in the panel's title."""
    cells = _agreement_cells(records)
    if not cells:
        return None
    kinds = ("massive", "sink", "delimiter", "other")
    fig, axes = plt.subplots(len(cells), 1, figsize=(max(7.0, 0.9 * max(map(len, cells.values())) + 2), 3.4 * len(cells)),
                             squeeze=False)
    for ax, (model, recs) in zip(axes[:, 0], cells.items()):
        width = 0.8 / len(kinds)
        for k, kind in enumerate(kinds):
            vals = [(r["metrics"]["agreement"]["by_kind"][kind]["kld_mean"] or float("nan")) for r in recs]
            n = recs[0]["metrics"]["agreement"]["by_kind"][kind]["n"]
            ax.bar([i + (k - 1.5) * width for i in range(len(recs))], vals, width, label=f"{kind} (n={n})")
        ax.set_xticks(range(len(recs)), [_cell_label(r) for r in recs], rotation=45, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("mean KLD, nats", fontsize=8)
        spike = (recs[0].get("profile") or {}).get("spike_magnitude")
        ratio = (recs[0].get("profile") or {}).get("top1_median_max")
        extra = f": spike magnitude {spike:.4g}, top-1/median {ratio:.4g}" if spike is not None and ratio is not None else ""
        ax.set_title(f"{model}{extra}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle("KL divergence by kind of position", fontsize=10)
    return save_figure(fig, path)
