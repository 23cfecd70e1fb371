"""The commands that read records: leaderboard, study and report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from qsink.cli.common import app, log, stdout
from qsink.errors import QsinkError
from qsink.validate import check_file_target, split_names


@app.command("leaderboard")
def leaderboard_cmd(
    results: Path = typer.Option(Path("runs"), "--results", help="Directory of JSON records."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the full leaderboard here (one row per cell)."),
    sort: str = typer.Option("ppl", "--sort", help="Column to sort by."),
    group_by: List[str] = typer.Option([], "--group-by", help="Also show a summary per group of these columns (e.g. scheme,handling)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the Δppl-vs-spike, heatmap and KLD PNGs into this directory."),
) -> None:
    """One row per record (all columns derived from the records), Spearman's rho between spike magnitude and
    Δppl per scheme, optional group summaries, CSV and plots."""
    from qsink.files import atomic_write_text
    from qsink.records import RecordStore
    from qsink.results import leaderboard
    from qsink.results.leaderboard import correlations, group_summary

    if csv:
        check_file_target(csv, "--csv")
    records = RecordStore(results).load_all()
    df = leaderboard(records, sort=sort)
    if df.empty:
        raise QsinkError(f"no records in {results}; run 'qsink evaluate' first")
    if sort not in df.columns:
        raise QsinkError(f"no column {sort!r} to sort by; try ppl, delta_ppl_pct, bpb, model or scheme")
    groups = split_names(group_by)
    missing = [g for g in groups if g not in df.columns]
    if missing:
        raise QsinkError(f"no column(s) {', '.join(missing)} to group by; try model, scheme, handling, norm")
    if csv:
        csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(csv, df.to_csv(index=False))
    table = Table(title=f"leaderboard ({len(df)} records in {results})")
    shown = [c for c in ("model", "scheme", "handling", "status", "ppl", "delta_ppl_pct", "kld_mean", "same_top", "sqnr_db_mean", "spike_magnitude",
                         "sink_ratio") if c in df.columns] + [c for c in df.columns if c.startswith("acc.")]
    for col in shown:
        table.add_column({"delta_ppl_pct": "Δppl %", "spike_magnitude": "spike", "sqnr_db_mean": "SQNR", "kld_mean": "KLD",
                          "same_top": "same top"}.get(col, col))
    for _, row in df.iterrows():
        table.add_row(*["-" if row[c] is None or row[c] != row[c] else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in shown])
    stdout.print(table)
    if groups:
        summary = group_summary(df, groups)
        gt = Table(title=f"per {', '.join(groups)}")
        for col in summary.columns:
            gt.add_column(col)
        for _, row in summary.iterrows():
            gt.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        stdout.print(gt)
    corr = correlations(df)
    if not corr.empty:
        from qsink.results.leaderboard import STATS

        ct = Table(title="Spearman rho across models (per text): spike magnitude / max kurtosis / linear-input max/median vs Δppl %")
        cols = [f"{k}_{s}" for s in STATS for k in ("rho", "p")]
        for col in ("data", "scheme", "handling", "n", *cols, "note"):
            ct.add_column(col)
        for _, r in corr.iterrows():
            ct.add_row(r["data"], r["scheme"], r["handling"], str(r["n"]),
                       *[("-" if r[c] != r[c] else f"{r[c]:+.2f}" if c.startswith("rho") else f"{r[c]:.3f}") for c in cols],
                       r["note"])
        stdout.print(ct)
    if csv:
        stdout.print(f"wrote {csv} ({len(df)} rows, {len(df.columns)} columns)")
    if plots:
        from qsink.results.plots import plot_delta_vs_spike, plot_heatmap, plot_kld_by_kind, plot_kld_distribution

        made = [p for p in (plot_delta_vs_spike(df, plots / "delta-vs-spike.png"), plot_heatmap(df, plots / "heatmap.png"),
                            plot_kld_distribution(records, plots / "kld.png"),
                            plot_kld_by_kind(records, plots / "kld-by-kind.png")) if p]
        log("plots: " + (", ".join(str(p) for p in made) if made else "none (no quantized cells with a profile)"))


@app.command("study")
def study_cmd(
    results: Path = typer.Argument(..., help="Directory of the study's JSON records (the sweep's records:)."),
    baseline: str = typer.Option(..., "--baseline", help="Model group the variants are compared with (a model name without -seedN)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the leaderboard here (one row per cell)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the study's PNGs into this directory."),
    fill: List[Path] = typer.Option([], "--fill", help="Markdown file whose <!-- qsink-study:NAME --> blocks get the tables (repeatable)."),
) -> None:
    """A variants-vs-quantization study from its records: leaderboard CSV, plots, and the tables written into
    marked blocks of Markdown files (the prose around them is left as it is)."""
    from qsink.measure.document import PROFILE_SCHEMA
    from qsink.records import RecordStore
    from qsink.results.study import write_study

    if not results.is_dir():
        raise QsinkError(f"{results} is not a directory of records; pass the sweep's records: directory")
    store = RecordStore(results)
    info = write_study(store.load_all(), baseline, csv, plots, list(fill),
                       profiles=store.load_all(schema=PROFILE_SCHEMA, required=("key", "summary", "layers")))
    stdout.print(f"{info['rows']} cells, {info['columns']} columns" + (f"; wrote {csv}" if csv else ""))
    for p in info["plots"]:
        stdout.print(f"plot: {p}")
    for f, names in info["filled"].items():
        stdout.print(f"filled {f}: {', '.join(names)}")


@app.command()
def report(
    results: Path = typer.Option(Path("runs"), "--results", help="Directory of JSON records."),
    out_file: Path = typer.Option(Path("report.md"), "--out", help="Markdown file to write (plots go beside it)."),
    title: str = typer.Option("qsink report", "--title"),
) -> None:
    """A Markdown report: models and their outlier profiles, quantized cells, Spearman summary, plots."""
    from qsink.measure.document import PROFILE_SCHEMA
    from qsink.records import RecordStore
    from qsink.results.report import build_report

    check_file_target(out_file, "--out")
    store = RecordStore(results)
    records = store.load_all()
    path = build_report(records, out_file, title=title, command=f"qsink report --results {results} --out {out_file}",
                        profiles=store.load_all(schema=PROFILE_SCHEMA, required=("key", "summary", "layers")))
    stdout.print(f"wrote {path}")
