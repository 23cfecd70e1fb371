"""``qsink report``: a Markdown report of a results directory, its tables and plots, from records alone."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from qsink.files import atomic_write_text
from qsink.results.markdown import fmt, frame_table
from qsink.results.leaderboard import MIN_MODELS_FOR_RHO, correlations, kind_table, leaderboard, task_short
from qsink.results.plots import plot_delta_vs_spike, plot_heatmap, plot_kld_by_kind, plot_kld_distribution


def analyses_section(profiles: list[dict], plots_dir: Path, stem: str) -> list[str]:
    """Markdown for the seed-paper analyses stored in profile records (attribution, vocabulary scan,
    gradient sinks), with their plots."""
    from qsink.measure.plots import plot_attribution, plot_gradient_sinks, plot_vocab_scan

    lines = []
    for prof in profiles:
        if not any(prof.get(k) for k in ("attribution", "vocab_scan", "gradient_sinks")):
            continue
        name = prof.get("model", {}).get("name", "model")
        lines += ["", f"### {name}", ""]
        figs = []
        a = prof.get("attribution")
        if a:
            lines.append(f"Step-up attribution on position {a['position']}:")
            lines.append("")
            rows = pd.DataFrame([{"channel": c["channel"],
                                  "injected by": f"block {c['injector']['block']} {c['injector']['sublayer']}",
                                  "Δ|h| in": c["injector"]["delta_abs"],
                                  "removed by": (f"block {c['remover']['block']} {c['remover']['sublayer']}" if c["remover"] else "-"),
                                  "Δ|h| out": c["remover"]["delta_abs"] if c["remover"] else None} for c in a["channels"]])
            lines += [frame_table(rows), ""]
            q = a.get("quadratic_form")
            if q and "error" not in q:
                sp, ty = q["spike_channel"], q["typical_channels"]
                lines += [f"Block {q['block']}'s FFN as a quadratic form for channel {q['channel']} ({q['approximation']}): "
                          f"λ1 = {sp['lambda_1']:.4g}, |λ1/λ2| = {sp['ratio']:.3g}, |cos(input, v1)| = {sp['cos_input_leading']:.3f}; "
                          f"typical channels (median of {ty['n']}): |λ1| = {ty['median_abs_lambda_1']:.3g}, ratio {ty['median_ratio']:.3g}, "
                          f"|cos| {ty['median_cos_input_leading']:.3f}.", ""]
            figs.append(plot_attribution(prof, plots_dir / f"{stem}-{name}-attribution.png", name))
        v = prof.get("vocab_scan")
        if v:
            ex = ", ".join(f"`{e['token']!r}`" for e in v["exceptions"][:12])
            lines += [f"Position-0 vocabulary scan (layers {v['layers']}): {v['n_spike']:,} of {v['n_scanned']:,} items "
                      f"({100 * v['fraction_spike']:.2f} %) carry a massive activation; exceptions: {ex or 'none'}"
                      + (" ..." if v["n_exceptions"] > 12 else "") + ". Delimiters at a later position that spike: "
                      + (", ".join(repr(d["token"]) for d in v["delimiters"] if d["spike"]) or "none") + ".", ""]
            figs.append(plot_vocab_scan(prof, plots_dir / f"{stem}-{name}-vocab.png", name))
        g = prof.get("gradient_sinks")
        if g:
            lines += [f"Gradient-sink ratio at position {g['position']} ({g['n_windows']} windows), median over layers: "
                      + ", ".join(f"{k} {g[k]['r_gs_median']:.3g}" for k in ("attn_in", "q", "k", "v") if k in g) + ".", ""]
            figs.append(plot_gradient_sinks(prof, plots_dir / f"{stem}-{name}-gradients.png", name))
        lines += [f"![{p.stem}]({p.name})" for p in figs if p]
    return (["", "## Seed-paper analyses"] + lines) if lines else []


def build_report(records: list[dict], out: Path, title: str = "qsink report", command: str | None = None,
                 profiles: list[dict] | None = None) -> Path:
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
                  "", frame_table(models)]

    # cells
    q = df[df["scheme"] != "fp"]
    if not q.empty:
        ccols = [c for c in ["model", "scheme", "handling", "status", "ppl", "delta_ppl_pct", "kld_mean", "same_top",
                             "dp_rms", "sqnr_db_mean"]
                 + [f"acc.{t}" for t in tasks] + [f"delta_acc.{t}" for t in tasks] if c in q.columns]
        cells = q.sort_values(["model", "scheme", "handling"])[ccols].rename(
            columns={"delta_ppl_pct": "Δppl %", "sqnr_db_mean": "SQNR dB", "kld_mean": "KLD", "same_top": "same top",
                     "dp_rms": "Δp RMS",
                     **{f"delta_acc.{t}": f"Δacc {t}" for t in tasks}, **{f"acc.{t}": f"acc {t}" for t in tasks}})
        lines += ["", "## Quantized cells", "",
                  "KLD = mean KL divergence of the quantized next-token distribution from the fp one (nats); same top = "
                  "share of positions with the same most likely token; Δp RMS = root mean square change in the "
                  "probability of the correct token (definitions: `qsink/evaluate/agreement.py`).", "",
                  frame_table(cells, {"Δppl %": "{:+.2f}", "SQNR dB": "{:.1f}", "KLD": "{:.4f}", "same top": "{:.3f}",
                                      "Δp RMS": "{:.4f}"})]
        kinds = kind_table(records)
        if not kinds.empty:
            lines += ["", "## Where the damage lands: KLD by kind of position", "",
                      "Mean KLD on positions whose residual stream carries a massive activation (found on the "
                      "evaluation windows), on the sink position (0), on delimiter tokens, and on all others; n = positions.",
                      "", frame_table(kinds, {c: "{:.4g}" for c in kinds.columns if c.startswith("KLD")})]

    # correlations
    corr = correlations(df)
    if not corr.empty:
        lines += ["", "## Does the spike predict the damage?", "",
                  "Spearman's ρ across models (evaluated on the same text) between the fp model's spike magnitude "
                  "(and max kurtosis, and the largest max/median channel ratio of any linear's input) and Δppl % "
                  f"under each scheme and handling, with a permutation p-value. With fewer than {MIN_MODELS_FOR_RHO} "
                  "models ρ is shown but means little.", "",
                  frame_table(corr, {c: ("{:+.2f}" if c.startswith("rho") else "{:.3f}")
                                        for c in corr.columns if c.startswith(("rho_", "p_"))})]

    # plots
    figs = [p for p in (plot_delta_vs_spike(df, plots_dir / f"{stem}-delta-vs-spike.png"),
                        plot_heatmap(df, plots_dir / f"{stem}-heatmap.png"),
                        plot_kld_distribution(records, plots_dir / f"{stem}-kld.png"),
                        plot_kld_by_kind(records, plots_dir / f"{stem}-kld-by-kind.png")) if p]
    if figs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figs]

    lines += analyses_section(profiles or [], plots_dir, stem)

    failed = df[df["status"] != "ok"]
    if not failed.empty:
        lines += ["", "## Failed cells", ""] + [f"- {r['model']} {r['scheme']}+{r['handling']}: {r['error']}"
                                                 for _, r in failed.iterrows()]
    if tasks:
        lines += ["", "Tasks: " + ", ".join(f"{t} (n = {fmt(df[f'n.{t}'].dropna().max())})" for t in tasks
                                            if f"n.{t}" in df.columns) + "."]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


__all__ = ["build_report", "task_short"]
