"""``qsink report``: a Markdown report of a results directory, its tables and plots, from records alone."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import pandas as pd

from qsink.config import atomic_write_text
from qsink.results.leaderboard import MIN_MODELS_FOR_RHO, correlations, leaderboard, task_short
from qsink.results.plots import plot_delta_vs_spike, plot_heatmap


def _fmt(v, spec: str = "{:.4g}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def markdown_table(df: pd.DataFrame, formats: dict | None = None) -> str:
    formats = formats or {}
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(r[c], formats.get(c, "{:.4g}")) for c in df.columns) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *body])


def build_report(records: list[dict], out: Path, title: str = "qsink report", command: str | None = None) -> Path:
    """Write ``out`` (Markdown) and its plots beside it; return the report's path."""
    df = leaderboard(records, sort="model")
    if df.empty:
        from qsink.errors import QsinkError

        raise QsinkError("no evaluation records to report on; run 'qsink evaluate' first")
    out = Path(out)
    plots_dir = out.parent
    stem = out.stem
    tasks = sorted({c.split(".", 1)[1] for c in df.columns if c.startswith("acc.")})
    lines = [f"# {title}", ""]
    commits = sorted({str(c)[:10] for c in df.get("env.git_commit", pd.Series(dtype=str)).dropna()})
    lines.append(f"Built from {len(df)} records ({(df['status'] == 'ok').sum()} ok) at "
                 f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}"
                 + (f", qsink commit(s) {', '.join(commits)}" if commits else "") + ".")
    if command:
        lines += ["", "Made with:", "", "```", command, "```"]

    # models: fp quality and outlier profile
    fp = df[(df["scheme"] == "fp") & (df["status"] == "ok")].drop_duplicates("model")
    mcols = [c for c in ["model", "norm", "gate", "ffn", "vscale", "config.model.n_params", "ppl", "spike_magnitude",
                         "top1_median_max", "kurtosis_max", "sink_ratio"] + [f"acc.{t}" for t in tasks] if c in fp.columns]
    if not fp.empty:
        models = fp[mcols].rename(columns={"config.model.n_params": "params", "ppl": "fp ppl", "spike_magnitude": "spike",
                                           "top1_median_max": "top-1/median", "kurtosis_max": "max kurtosis",
                                           "sink_ratio": "sink ratio", **{f"acc.{t}": f"acc {t}" for t in tasks}})
        lines += ["", "## Models: full-precision quality and outlier profile", "",
                  "Spike = largest |hidden state| over layers; top-1/median = the largest ratio of a layer's top activation "
                  "to its median; sink ratio = share of heads whose mean attention on the first token exceeds the threshold.",
                  "", markdown_table(models)]

    # cells
    q = df[df["scheme"] != "fp"]
    if not q.empty:
        ccols = [c for c in ["model", "scheme", "handling", "status", "ppl", "delta_ppl_pct", "sqnr_db_mean"]
                 + [f"acc.{t}" for t in tasks] + [f"delta_acc.{t}" for t in tasks] if c in q.columns]
        cells = q.sort_values(["model", "scheme", "handling"])[ccols].rename(
            columns={"delta_ppl_pct": "Δppl %", "sqnr_db_mean": "SQNR dB",
                     **{f"delta_acc.{t}": f"Δacc {t}" for t in tasks}, **{f"acc.{t}": f"acc {t}" for t in tasks}})
        lines += ["", "## Quantized cells", "", markdown_table(cells, {"Δppl %": "{:+.2f}", "SQNR dB": "{:.1f}"})]

    # correlations
    corr = correlations(df)
    if not corr.empty:
        lines += ["", "## Does the spike predict the damage?", "",
                  "Spearman's ρ across models between the fp model's spike magnitude (and max kurtosis) and Δppl % "
                  f"under each scheme and handling, with a permutation p-value. With fewer than {MIN_MODELS_FOR_RHO} "
                  "models ρ is shown but means little.", "",
                  markdown_table(corr, {"rho_spike": "{:+.2f}", "rho_kurtosis": "{:+.2f}", "p_spike": "{:.3f}",
                                        "p_kurtosis": "{:.3f}"})]

    # plots
    figs = [p for p in (plot_delta_vs_spike(df, plots_dir / f"{stem}-delta-vs-spike.png"),
                        plot_heatmap(df, plots_dir / f"{stem}-heatmap.png")) if p]
    if figs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figs]

    failed = df[df["status"] != "ok"]
    if not failed.empty:
        lines += ["", "## Failed cells", ""] + [f"- {r['model']} {r['scheme']}+{r['handling']}: {r['error']}"
                                                 for _, r in failed.iterrows()]
    if tasks:
        lines += ["", "Tasks: " + ", ".join(f"{t} (n = {_fmt(df[f'n.{t}'].dropna().max())})" for t in tasks
                                            if f"n.{t}" in df.columns) + "."]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


__all__ = ["build_report", "markdown_table", "task_short"]
