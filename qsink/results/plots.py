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
