"""The ``qsink`` command line.

Every command turns a :class:`~qsink.errors.QsinkError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from qsink.errors import QsinkError
from qsink.validate import check_file_target

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qsink: how much does low-bit quantization hurt a language model, and why.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: performance ratios measured side by side in one run.")
data_app = typer.Typer(no_args_is_help=True, help="Corpora: fetch and list the built-in texts.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

# tables are wide: when the output is a file or a pipe, do not squeeze them into 80 columns
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _log(msg: str) -> None:
    err.print(msg, highlight=False, markup=False)


DEVICE_HELP = "auto, cpu, cuda[:N] or map (layers spread over the GPUs by accelerate; auto maps a model too big for one GPU)."


def _split_names(values: list[str]) -> list[str]:
    from qsink.evaluate.recipe import split_names

    return split_names(values)


def _windows_progress(progress: Progress):
    """A factory the runners call per task: (description, total windows) -> advance callback."""

    def factory(desc: str, total: int):
        task = progress.add_task(desc, total=total)
        return lambda n: progress.advance(task, n)

    return factory


@contextmanager
def _progress(unit: str = "windows", *columns):
    """Progress bars on stderr; if the work inside fails, the bars are hidden so that the error line
    (or the interruption line) stands alone."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), *columns,
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    with progress:
        try:
            yield progress
        except BaseException:
            for t in progress.task_ids:
                progress.update(t, visible=False)
            raise


@app.command()
def evaluate(
    ctx_: typer.Context,
    models: Optional[List[str]] = typer.Argument(None, help="Built-in names, .gguf files or Hugging Face checkpoint directories."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="A YAML evaluation matrix (recipes/eval/*.yaml); command-line options win."),
    scheme: List[str] = typer.Option(["fp"], "--scheme", "-s", help="Scheme name(s), comma-separated or repeated; 'qsink schemes' lists them. NAME+kvB adds B-bit k/v quantization."),
    handling: List[str] = typer.Option(["none"], "--handling", help="Outlier-handling method(s), comma-separated or repeated."),
    task: List[str] = typer.Option([], "--task", "-t", help="Downstream task(s) scored through lm-eval on every cell: qsink_cloze, qsink_sentiment, or an lm-eval task name."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Items per task (default: all)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples per task item."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Corpus NAME[:SPLIT] (default austen:test) or hf:NAME[:CONFIG]."),
    text: Optional[Path] = typer.Option(None, "--text", help="Evaluate on this UTF-8 text file instead of a corpus."),
    ctx: int = typer.Option(512, "--ctx", help="Tokens per window."),
    max_tokens: int = typer.Option(12288, "--max-tokens", help="Text tokens to use (0 = the whole text)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per forward pass."),
    calib: int = typer.Option(4, "--calib", help="Calibration windows for quantized cells (seeded, from --calib-data)."),
    calib_data: str = typer.Option("austen:train", "--calib-data", help="Calibration corpus NAME[:SPLIT]; never the test split."),
    backend: str = typer.Option("fake", "--backend", help="fake (qsink's fake quantization) or bnb (bitsandbytes kernels)."),
    include: List[str] = typer.Option([], "--include", help="Also quantize lm_head and/or embed (default: they stay in high precision)."),
    profile_samples: int = typer.Option(16, "--profile-samples", help="Windows for each model's spike/sink profile, attached to its records (0 = none)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON records."),
    force: bool = typer.Option(False, "--force", help="Recompute cells whose record already exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow custom model code from a checkpoint directory."),
) -> None:
    """The matrix models x schemes x outlier handling (fp once per model): perplexity, downstream accuracy,
    the model's spike profile and SQNR, one resumable JSON record per cell."""
    from qsink.data import resolve_data
    from qsink.evaluate import run_cells
    from qsink.evaluate.recipe import plan_matrix
    from qsink.models import resolve
    from qsink.results import RecordStore

    opts = dict(models=models or [], schemes=scheme, handling=handling, tasks=task, limit=limit, num_fewshot=num_fewshot,
                data=data, ctx=ctx, max_tokens=max_tokens, batch_size=batch_size, calib=calib, calib_data=calib_data,
                backend=backend, include=include, profile_samples=profile_samples, dtype=dtype, device=device,
                seed=seed, out=out_dir, trust_remote_code=trust_remote_code)
    if recipe:
        from qsink.evaluate.recipe import load_eval_recipe

        params = {"models": "models", "schemes": "scheme", "handling": "handling", "tasks": "task", "out": "out_dir"}
        for key, value in load_eval_recipe(recipe).items():
            source = ctx_.get_parameter_source(params.get(key, key))  # typer vendors click: compare by name
            if getattr(source, "name", None) != "COMMANDLINE":
                opts[key] = Path(value) if key == "out" else value
    if not opts["models"]:
        raise QsinkError("name at least one model (or pass --recipe); 'qsink models' lists the built-in ones")
    cells, dropped, tasks, settings = plan_matrix(opts, force=force)
    for reason in dropped:
        _log(f"skipping {reason}")
    out_dir = Path(opts["out"])
    store = RecordStore(out_dir)
    store.ensure_writable()
    resolved = [resolve(m) for m in _split_names(opts["models"])]  # bad model paths fail before any data is fetched
    corpus = resolve_data(opts["data"], str(text) if text else None, log=_log)
    calib_text = None
    if any(c.scheme != "fp" for c in cells):
        calib_text = resolve_data(settings.calib_data, None, log=_log)
    with _progress() as progress:
        overall = progress.add_task(f"matrix: {len(resolved)} model(s) x {len(cells)} cell(s)", total=len(resolved) * len(cells))
        outcomes = run_cells(resolved, cells, corpus, settings, store, calib_text=calib_text, log=_log,
                             progress_factory=_windows_progress(progress), on_cell=lambda o: progress.advance(overall))
    table = Table(title=f"perplexity on {corpus.name} (ctx {settings.ctx})")
    cols = ["model", "cell", "status", "ppl", "Δppl %", "bits/byte", "SQNR dB", "spike", "sinks"]
    cols += [t.removeprefix("qsink_") for t in tasks] + ["tok/s"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "cell", "status") else "right")
    for o in outcomes:
        m, t, prof = o.record["metrics"], o.record["timing"], o.record.get("profile") or {}
        status = "cached" if o.skipped else o.record["status"]
        fmt = lambda v, f: f.format(v) if v is not None else "-"  # noqa: E731
        accs = [fmt(m.get("tasks", {}).get(name, {}).get("acc"), "{:.3f}") for name in tasks]
        table.add_row(o.model, o.cell.label, status, fmt(m.get("ppl"), "{:.3f}"), fmt(m.get("delta_ppl_pct"), "{:+.2f}"),
                      fmt(m.get("bpb"), "{:.4f}"), fmt(m.get("sqnr_db_mean"), "{:.1f}"), fmt(prof.get("spike_magnitude"), "{:.4g}"),
                      fmt(prof.get("sink_ratio"), "{:.2f}"), *accs, f"{t.get('tokens_per_s', 0):.0f}")
        if o.record["status"] != "ok":
            _log(f"{o.model} [{o.cell.label}] failed: {o.record['error']}")
    out.print(table)
    skipped = sum(o.skipped for o in outcomes)
    if skipped:
        _log(f"{skipped} cell(s) already had a record and were not recomputed (--force recomputes them)")
    _log(f"records in {out_dir}/; 'qsink leaderboard --results {out_dir}' tabulates them")


@app.command()
def measure(
    model: str = typer.Argument(..., help="Built-in name, .gguf file or Hugging Face checkpoint directory."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Corpus NAME[:SPLIT] (default austen:test) or hf:NAME[:CONFIG]."),
    text: Optional[Path] = typer.Option(None, "--text", help="Profile on this UTF-8 text file instead of a corpus."),
    samples: int = typer.Option(16, "--samples", "-n", help="Number of windows."),
    ctx: int = typer.Option(512, "--ctx", help="Tokens per window."),
    top_k: int = typer.Option(8, "--top-k", help="Largest activations kept per layer."),
    massive_abs: float = typer.Option(100.0, "--massive-abs", help="A massive activation has |h| above this ..."),
    massive_ratio: float = typer.Option(1000.0, "--massive-ratio", help="... and above this times the layer median."),
    sink_eps: float = typer.Option(0.3, "--sink-eps", help="A head is a sink if its mean attention on key 0 exceeds this."),
    attn_windows: Optional[int] = typer.Option(None, "--attn-windows", help="Windows that run eager attention for sink statistics (default: all)."),
    batch_size: int = typer.Option(1, "--batch-size"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Directory for the profile JSON and its plots."),
    force: bool = typer.Option(False, "--force", help="Recompute even if this profile exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    attribution: bool = typer.Option(False, "--attribution", help="Also find the sub-layers that inject and remove each spike channel, and the injecting FFN's quadratic-form spectrum."),
    vocab_scan: bool = typer.Option(False, "--vocab-scan", help="Also place every vocabulary item at position 0 and count those that spike."),
    scan_sample: Optional[int] = typer.Option(None, "--sample", help="--vocab-scan: a seeded sample of this many items instead of the whole vocabulary."),
    scan_layers: Optional[str] = typer.Option(None, "--scan-layers", help="--vocab-scan: residual layers to check (default: the first 3 layers of the position-0 plateau)."),
    gradients: bool = typer.Option(False, "--gradients", help="Also back-propagate the LM loss and report the gradient-sink ratio per layer (weights untouched)."),
    grad_windows: int = typer.Option(4, "--grad-windows", help="--gradients: windows back-propagated, one at a time."),
) -> None:
    """Massive activations, attention sinks and outlier statistics of one model, in one pass."""
    from qsink.data import resolve_data
    from qsink.measure.plots import plot_profile
    from qsink.measure.profiler import ProfileSettings
    from qsink.measure.run import check_options, measure_model
    from qsink.models import resolve
    from qsink.results import RecordStore
    from qsink.validate import at_least

    check_options(ctx, samples, batch_size, dtype, device)
    settings = ProfileSettings(top_k=top_k, massive_abs=massive_abs, massive_ratio=massive_ratio, sink_eps=sink_eps,
                               attn_windows=attn_windows)
    at_least(flags=True, grad_windows=(grad_windows, 1), sample=(scan_sample, 1))
    layers = _parse_layers(scan_layers)
    store = RecordStore(out_dir)
    store.ensure_writable()
    res = resolve(model)
    corpus = resolve_data(data, str(text) if text else None, log=_log)
    loaded = None
    if vocab_scan or gradients:
        from qsink.models import load

        loaded = load(res, dtype=dtype, device=device, trust_remote_code=trust_remote_code, log=_log)
        n_layers = loaded[0].config.num_hidden_layers
        if layers and (min(layers) < 1 or max(layers) > n_layers):
            raise QsinkError(f"--scan-layers must lie in 1..{n_layers} (residual stream after each block)")
    with _progress() as progress:
        outcome = measure_model(res, corpus, store, ctx=ctx, samples=samples, settings=settings, dtype=dtype, device=device,
                                batch_size=batch_size, force=force, trust_remote_code=trust_remote_code, log=_log,
                                on_batch_factory=_windows_progress(progress), attribution=attribution, loaded=loaded)
        doc = outcome.profile.to_dict()
        if vocab_scan:
            doc = _vocab_scan(res, doc, store, outcome.path, scan_sample, layers, loaded, progress)
        if gradients:
            doc = _gradients(doc, store, outcome.path, corpus, ctx, grad_windows, loaded)
    plots = plot_profile(doc, out_dir, outcome.path.stem, res.name)
    _print_profile(res.name, doc)
    if doc.get("attribution"):
        _print_attribution(doc["attribution"])
    if doc.get("vocab_scan"):
        _print_vocab_scan(doc["vocab_scan"])
    if doc.get("gradient_sinks"):
        g = doc["gradient_sinks"]
        out.print(f"gradient-sink ratio at position {g['position']} ({g['n_windows']} windows): median over layers "
                  + ", ".join(f"{k} {g[k]['r_gs_median']:.3g}" for k in ("attn_in", "q", "k", "v") if k in g)
                  + "; per layer (v): " + " ".join(f"{r:.3g}" for r in g.get("v", g["attn_in"])["r_gs"]),
                  highlight=False, markup=False)
    if outcome.skipped:
        _log("this profile already existed and was not recomputed (--force recomputes it)")
    _log(f"profile: {outcome.path}")
    _log("plots: " + ", ".join(str(p) for p in plots))


def _parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise QsinkError(f"--scan-layers takes comma-separated layer numbers, not {text!r}") from None


def _vocab_scan(res, doc, store, path, sample, layers, loaded, progress) -> dict:
    from qsink.measure.vocab_scan import vocab_scan

    if not layers:
        pos0 = [p for p in doc.get("massive", {}).get("positions", []) if p["position"] == 0]
        layers = pos0[0]["layers"][:3] if pos0 else [max(1, doc["summary"]["spike_layer"])]
    old = doc.get("vocab_scan")
    if old and old["layers"] == layers and old["n_scanned"] == (min(sample, old["vocab_size"]) if sample else old["vocab_size"]):
        _log("this vocabulary scan already existed and was not recomputed")
        return doc
    model, tok = loaded
    task = progress.add_task(f"{res.name} · vocabulary scan", total=min(sample, len(tok)) if sample else len(tok))
    doc = dict(doc)
    doc["vocab_scan"] = vocab_scan(model, tok, layers, sample=sample, massive_abs=doc["settings"]["massive_abs"],
                                   massive_ratio=doc["settings"]["massive_ratio"],
                                   on_batch=lambda n: progress.advance(task, n))
    _rewrite_profile(store, path, doc)
    return doc


def _gradients(doc, store, path, corpus, ctx, n, loaded) -> dict:
    from qsink.data.windows import adds_bos, make_windows
    from qsink.measure.gradients import gradient_sinks

    old = doc.get("gradient_sinks")
    if old and old["n_windows"] == n and old["ctx"] == ctx:
        _log("these gradient statistics already existed and were not recomputed")
        return doc
    model, tok = loaded
    windows = make_windows(tok, corpus, ctx, max_tokens=n * (ctx - 1 if adds_bos(tok) else ctx))
    doc = dict(doc)
    doc["gradient_sinks"] = gradient_sinks(model, windows.input_ids[:n])
    _rewrite_profile(store, path, doc)
    return doc


def _rewrite_profile(store, path: Path, doc: dict) -> None:
    """Store ``doc`` over the profile record at ``path`` (same stem and key)."""
    store.write(doc, path.stem.split("__profile__")[0] + "__profile")


def _print_vocab_scan(v: dict) -> None:
    out.print(f"vocabulary scan ({v['n_scanned']:,} of {v['vocab_size']:,} items at position 0, layers {v['layers']}): "
              f"{v['n_spike']:,} spike ({100 * v['fraction_spike']:.2f} %), {v['n_exceptions']:,} do not; "
              f"{v['wall_s']:.0f} s", highlight=False, markup=False)
    if v["exceptions"]:
        out.print("exceptions: " + ", ".join(repr(e["token"]) for e in v["exceptions"][:20])
                  + (" ..." if v["n_exceptions"] > 20 else ""), highlight=False, markup=False)
    if v["delimiters"]:
        out.print("delimiters at position " + str(v["delimiters"][0]["position"]) + ": "
                  + ", ".join(f"{d['token']!r} {'spike' if d['spike'] else 'no'} ({d['peak']:.3g})" for d in v["delimiters"]),
                  highlight=False, markup=False)


def _print_attribution(a: dict) -> None:
    table = Table(title=f"step-up attribution on position {a['position']} (window {a['window']})")
    for col in ("channel", "injected by", "Δ|h|", "removed by", "Δ|h| "):
        table.add_column(col, justify="right")
    for c in a["channels"]:
        inj, rem = c["injector"], c["remover"]
        table.add_row(str(c["channel"]), f"block {inj['block']} {inj['sublayer']}", f"{inj['delta_abs']:+.4g}",
                      f"block {rem['block']} {rem['sublayer']}" if rem else "-", f"{rem['delta_abs']:+.4g}" if rem else "-")
    out.print(table)
    q = a.get("quadratic_form")
    if q and "error" not in q:
        sp, ty = q["spike_channel"], q["typical_channels"]
        out.print(f"FFN of block {q['block']}, channel {q['channel']} as a quadratic form ({q['approximation']}): "
                  f"lambda_1 {sp['lambda_1']:.4g}, |lambda_1/lambda_2| {sp['ratio']:.3g}, |cos(input, v_1)| {sp['cos_input_leading']:.3f}; "
                  f"typical channels (median of {ty['n']}): |lambda_1| {ty['median_abs_lambda_1']:.3g}, ratio {ty['median_ratio']:.3g}, "
                  f"|cos| {ty['median_cos_input_leading']:.3f}", highlight=False, markup=False)


def _print_profile(name: str, doc: dict) -> None:
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
    out.print(table)
    out.print(
        f"spike magnitude {s['spike_magnitude']:.4g} (layer {s['spike_layer']}), top-1/median up to {s['top1_median_max']:.4g}; "
        f"massive activations: {'yes' if s['has_massive'] else 'none'}"
        + (f", channels {s['spike_channels']}, layers {s['step_up_layer']}..{(s['step_down_layer'] or doc['n_layers'] + 1) - 1}, "
           f"tokens {', '.join(s['spike_tokens'])}" if s["has_massive"] else ""),
        highlight=False, markup=False,
    )
    if s["sink_ratio"] is not None:
        out.print(f"sink ratio {s['sink_ratio']:.3f} (heads with alpha > {doc['settings']['sink_eps']}), mean alpha {s['alpha_mean']:.3f}; "
                  f"secondary sinks: {len(doc['attention']['secondary_sinks'])} heads", highlight=False, markup=False)
    nc = s["near_constancy"]
    out.print(f"max kurtosis {s['kurtosis_max']:.4g}; linear-input absmax max/median up to {s['linear_input_ratio_max']:.4g}; "
              f"near-constancy of spike tokens {'-' if nc is None else f'{nc:.4f}'}", highlight=False, markup=False)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="A YAML recipe (recipes/variants/*.yaml)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Checkpoint directory (default runs/train/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    size: Optional[str] = typer.Option(None, "--size", help="A size from the recipe's sizes: (e.g. gpu)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the recipe's step count."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed (run-to-run spread)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Train one of qsink's model variants from a recipe; the output loads in measure and evaluate."""
    from qsink.models import pick_device
    from qsink.train import load_recipe
    from qsink.train import train as run_training

    overrides = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
    r = load_recipe(recipe, size=size, overrides=overrides or None)
    out_dir = out_dir or Path("runs/train") / (r.name if seed is None else f"{r.name}-seed{seed}")
    with _progress("steps", TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s")) as progress:
        task = progress.add_task(f"train {r.name}", total=r.steps, loss=float("nan"), tps=0.0)

        def on_step(step, loss, tps):
            progress.update(task, completed=step, loss=loss, tps=tps)

        result = run_training(r, out_dir, resume=resume, device=pick_device(device), log=_log, on_step=on_step)
    out.print(f"trained {r.name} to step {result.step}: train loss {result.train_loss:.4f}, "
              f"val loss {result.val_loss if result.val_loss is None else round(result.val_loss, 4)}, "
              f"{result.tokens_per_s:.0f} tokens/s; checkpoint {result.out_dir}", highlight=False)


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="A sweep recipe (recipes/study-cpu.yaml): what to train and what to evaluate."),
    executor: str = typer.Option("local", "--executor", help="local (this machine) or ray (one Ray task per job)."),
    address: Optional[str] = typer.Option(None, "--address", help="--executor ray: an existing cluster (e.g. 127.0.0.1:6379 or auto); default: start one here."),
    workers: int = typer.Option(1, "--workers", help="--executor local: parallel worker processes (0 = one per CPU core; 1 = run in this process)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda[:N] or map, for every job."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Override the recipe's out directory."),
    plan: bool = typer.Option(False, "--plan", help="List the jobs and which are already done; run nothing."),
) -> None:
    """Train and evaluate as independent jobs with dependencies; rerunning after a crash runs only what is missing."""
    import os

    from qsink.sweep import execute, load_sweep, status

    if workers < 0:
        raise QsinkError(f"--workers must be 0 (one per CPU core) or more, not {workers}")
    sw = load_sweep(recipe, device=device, out=out_dir)
    for reason in sw.dropped:
        _log(f"skipping {reason}")
    if plan:
        done = status(sw)
        table = Table(title=f"sweep {sw.name}: {len(sw.jobs)} jobs, {sum(done.values())} done (out {sw.out})")
        for col in ("job", "after", "done"):
            table.add_column(col)
        for job in sw.jobs:
            table.add_row(job.key, ", ".join(job.deps) or "-", "yes" if done[job.key] else "no")
        out.print(table)
        return
    n = workers if workers > 0 else (os.cpu_count() or 1)
    with _progress("jobs") as progress:
        bar = progress.add_task(f"sweep {sw.name} ({executor})", total=len(sw.jobs))

        def on_result(job, summary):
            progress.advance(bar)
            if summary["status"] in ("failed", "blocked"):
                _log(f"{job.key}: {summary['status']}: {summary['detail']}")

        results = execute(sw, executor=executor, workers=n, address=address, on_result=on_result)
    counts = {k: sum(r["status"] == k for r in results) for k in ("done", "skipped", "failed", "blocked")}
    out.print(f"sweep {sw.name}: {counts['done']} run, {counts['skipped']} already done, {counts['failed']} failed, "
              f"{counts['blocked']} blocked; records in {sw.records}/", highlight=False)
    if counts["failed"] or counts["blocked"]:
        raise QsinkError(f"{counts['failed'] + counts['blocked']} job(s) did not finish; fix the cause above and rerun "
                         "the same command (finished jobs are kept)")


@app.command("leaderboard")
def leaderboard_cmd(
    results: Path = typer.Option(Path("runs"), "--results", help="Directory of JSON records."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the full leaderboard here (one row per cell)."),
    sort: str = typer.Option("ppl", "--sort", help="Column to sort by."),
    group_by: List[str] = typer.Option([], "--group-by", help="Also show a summary per group of these columns (e.g. scheme,handling)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the Δppl-vs-spike and heatmap PNGs into this directory."),
) -> None:
    """One row per record (all columns derived from the records), Spearman's rho between spike magnitude and
    Δppl per scheme, optional group summaries, CSV and plots."""
    from qsink.config import atomic_write_text
    from qsink.results import RecordStore, leaderboard
    from qsink.results.leaderboard import correlations, group_summary

    if csv:
        check_file_target(csv, "--csv")
    df = leaderboard(RecordStore(results).load_all(), sort=sort)
    if df.empty:
        raise QsinkError(f"no records in {results}; run 'qsink evaluate' first")
    if sort not in df.columns:
        raise QsinkError(f"no column {sort!r} to sort by; try ppl, delta_ppl_pct, bpb, model or scheme")
    groups = _split_names(group_by)
    missing = [g for g in groups if g not in df.columns]
    if missing:
        raise QsinkError(f"no column(s) {', '.join(missing)} to group by; try model, scheme, handling, norm")
    if csv:
        csv.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(csv, df.to_csv(index=False))
    table = Table(title=f"leaderboard ({len(df)} records in {results})")
    shown = [c for c in ("model", "scheme", "handling", "status", "ppl", "delta_ppl_pct", "sqnr_db_mean", "spike_magnitude",
                         "sink_ratio") if c in df.columns] + [c for c in df.columns if c.startswith("acc.")]
    for col in shown:
        table.add_column(col.replace("delta_ppl_pct", "Δppl %").replace("spike_magnitude", "spike").replace("sqnr_db_mean", "SQNR"))
    for _, row in df.iterrows():
        table.add_row(*["-" if row[c] is None or row[c] != row[c] else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in shown])
    out.print(table)
    if groups:
        summary = group_summary(df, groups)
        gt = Table(title=f"per {', '.join(groups)}")
        for col in summary.columns:
            gt.add_column(col)
        for _, row in summary.iterrows():
            gt.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        out.print(gt)
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
        out.print(ct)
    if csv:
        out.print(f"wrote {csv} ({len(df)} rows, {len(df.columns)} columns)")
    if plots:
        from qsink.results.plots import plot_delta_vs_spike, plot_heatmap

        made = [p for p in (plot_delta_vs_spike(df, plots / "delta-vs-spike.png"), plot_heatmap(df, plots / "heatmap.png")) if p]
        _log("plots: " + (", ".join(str(p) for p in made) if made else "none (no quantized cells with a profile)"))


@app.command("ablate")
def ablate_cmd(
    model: str = typer.Argument(..., help="Built-in name, .gguf file or Hugging Face checkpoint directory."),
    scheme: str = typer.Option(..., "--scheme", "-s", help="The scheme to take apart ('qsink schemes' lists them)."),
    handling: str = typer.Option("none", "--handling", help="Outlier-handling method applied before the ablation."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Evaluation text NAME[:SPLIT] (default austen:test)."),
    ctx: int = typer.Option(512, "--ctx"),
    max_tokens: int = typer.Option(12288, "--max-tokens"),
    calib: int = typer.Option(4, "--calib", help="Calibration windows."),
    calib_data: str = typer.Option("austen:train", "--calib-data", help="Calibration text (a train or validation split)."),
    parts: str = typer.Option("act,weight", "--parts", help="What to exempt, one linear at a time: act, weight or both."),
    only: Optional[str] = typer.Option(None, "--only", help="Only linears whose name matches this regular expression (e.g. 'mlp.down_proj', '^1[01]\\.')."),
    batch_size: int = typer.Option(8, "--batch-size"),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration windows (as in evaluate)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON result."),
) -> None:
    """Which linear layer's quantization does the damage: each linear's activations (or weights) kept in
    full precision in turn, the rest quantized, perplexity measured again."""
    import copy

    from qsink.bench import write_json
    from qsink.data import resolve_data
    from qsink.data.windows import make_windows
    from qsink.evaluate.perplexity import perplexity
    from qsink.evaluate.settings import EvalSettings
    from qsink.models import check_ctx, load, resolve
    from qsink.quant import get_scheme, quantize_
    from qsink.quant.ablate import PARTS, exemptions, linear_ablation
    from qsink.quant.apply import check_combination
    from qsink.quant.calibration import calibration_windows
    from qsink.results import RecordStore

    settings = EvalSettings(ctx=ctx, max_tokens=max_tokens, batch_size=batch_size, calib=calib, calib_data=calib_data,
                            seed=seed, device=device)
    want = tuple(_split_names([parts]))
    bad = [p for p in want if p not in PARTS] or ([] if want else ["(none)"])
    if bad:
        raise QsinkError(f"--parts takes {' and/or '.join(PARTS)}, not {', '.join(bad)}")
    if only:
        try:
            re.compile(only)
        except re.error as e:
            raise QsinkError(f"--only {only!r} is not a regular expression: {e}") from None
    sch = get_scheme(scheme)
    if scheme == "fp":
        raise QsinkError("--scheme fp quantizes nothing, so there is nothing to ablate; name a quantized scheme ('qsink schemes')")
    check_combination(sch, handling)
    RecordStore(out_dir).ensure_writable()
    res = resolve(model)
    text = resolve_data(data, None, log=_log)
    calib_text = resolve_data(calib_data, None, log=_log)
    model_, tok = load(res, device=device, log=_log)
    check_ctx(model_, ctx, res.name)
    windows = make_windows(tok, text, settings.ctx, settings.max_tokens)
    qmodel = copy.deepcopy(model_)
    quantize_(qmodel, sch, handling, calibration_windows(tok, calib_text, calib, ctx, seed), tok, sqnr=False)
    n_steps = len(exemptions(qmodel, want, only))  # an --only that matches nothing fails here, before the fp pass
    fp_ppl = perplexity(model_, tok, windows, batch_size=batch_size).ppl
    del model_
    with _progress("exemptions") as progress:
        task = progress.add_task(f"{res.name} {scheme}+{handling}", total=n_steps)
        result = linear_ablation(qmodel, tok, windows, fp_ppl, parts=want, batch_size=batch_size,
                                 on_step=lambda _: progress.advance(task), only=only)
    doc = {"kind": "qsink.ablate/1", "model": res.name, "model_sha256": res.sha256, "scheme": scheme, "handling": handling,
           "data": text.name, "data_sha256": text.sha256, "ctx": ctx, "max_tokens": max_tokens, "calib": calib,
           "calib_data": calib_data, "seed": seed, "only": only, **result}
    suffix = f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', only)}" if only else ""
    path = write_json(doc, out_dir / f"{res.name}__ablate-{scheme}-{handling}{suffix}.json")
    table = Table(title=f"{res.name} {scheme}+{handling}: fp ppl {fp_ppl:.4f}, quantized {result['ppl']:.4f} "
                        f"({result['delta_ppl_pct']:+.2f} %); one linear exempted at a time")
    for col in ("linear", "part", "ppl", "Δppl %", "recovered"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(r["linear"], r["part"], f"{r['ppl']:.4f}", f"{r['delta_ppl_pct']:+.3f}", f"{r['recovered']:.2f}")
    out.print(table)
    _log(f"wrote {path}")


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
    from qsink.results import RecordStore
    from qsink.results.study import write_study

    if not results.is_dir():
        raise QsinkError(f"{results} is not a directory of records; pass the sweep's records: directory")

    info = write_study(RecordStore(results).load_all(), baseline, csv, plots, list(fill))
    out.print(f"{info['rows']} cells, {info['columns']} columns" + (f"; wrote {csv}" if csv else ""))
    for p in info["plots"]:
        out.print(f"plot: {p}")
    for f, names in info["filled"].items():
        out.print(f"filled {f}: {', '.join(names)}")


@app.command()
def report(
    results: Path = typer.Option(Path("runs"), "--results", help="Directory of JSON records."),
    out_file: Path = typer.Option(Path("report.md"), "--out", help="Markdown file to write (plots go beside it)."),
    title: str = typer.Option("qsink report", "--title"),
) -> None:
    """A Markdown report: models and their outlier profiles, quantized cells, Spearman summary, plots."""
    from qsink.measure.profile import PROFILE_SCHEMA
    from qsink.results import RecordStore
    from qsink.results.report import build_report

    check_file_target(out_file, "--out")
    store = RecordStore(results)
    records = store.load_all()
    path = build_report(records, out_file, title=title, command=f"qsink report --results {results} --out {out_file}",
                        profiles=store.load_all(schema=PROFILE_SCHEMA, required=("key", "summary", "layers")))
    out.print(f"wrote {path}")


@app.command("models")
def models_cmd() -> None:
    """List the built-in models, where they resolve on disk, and their size."""
    from qsink.models import BUILTINS

    table = Table(title="built-in models")
    for col in ("name", "description", "location", "size"):
        table.add_column(col)
    for name, b in BUILTINS.items():
        path = b.locate()
        where = str(path) if path else f"not installed: {b.install}"
        size = f"{path.stat().st_size / 2**20:.1f} MiB" if path else "-"
        table.add_row(name, b.description, where, size)
    out.print(table)
    for name, b in BUILTINS.items():
        if b.note:
            out.print(f"[bold]{name}[/bold]: {b.note}")
    out.print("Any Hugging Face checkpoint directory (safetensors) or .gguf file works too.")


@app.command("schemes")
def schemes_cmd() -> None:
    """List the quantization schemes and the outlier-handling methods."""
    from qsink.quant import HANDLERS, SCHEMES

    table = Table(title="schemes")
    for col in ("name", "weights", "activations", "description"):
        table.add_column(col)
    for name, s in SCHEMES.items():
        act = "-" if s.act is None else f"{s.act}{' static' if s.act_static else ''}"
        table.add_row(name, str(s.weight) if s.weight else "-", act, s.description)
    out.print(table)
    table = Table(title="outlier handling (--handling)")
    table.add_column("name")
    table.add_column("description")
    for name, cls in HANDLERS.items():
        table.add_row(name, cls.description)
    out.print(table)


@data_app.command("fetch")
def data_fetch(
    names: Optional[List[str]] = typer.Argument(None, help="Corpora to fetch (default: all)."),
    force: bool = typer.Option(False, "--force", help="Download and extract again."),
) -> None:
    """Download the Debian packages and extract the corpora into the cache (sha256-verified)."""
    from qsink.data import CORPORA, fetch

    for name in names or CORPORA.names():
        CORPORA.get(name)
    for name in names or CORPORA.names():
        fetch(name, force=force, log=_log)


@data_app.command("list")
def data_list() -> None:
    """List the corpora, their splits and whether they are cached."""
    from qsink.data import CORPORA
    from qsink.data.corpora import is_fetched, read_manifest

    table = Table(title="corpora")
    for col in ("name", "package", "description", "splits", "cached"):
        table.add_column(col)
    for name, c in CORPORA.items():
        cached = "no (fetched on first use)"
        if is_fetched(name):
            splits = read_manifest(name)["splits"]
            cached = ", ".join(f"{s} {v['chars'] / 1e6:.2f}M chars" for s, v in splits.items())
        table.add_row(name, c.package, c.description, ", ".join(c.splits), cached)
    out.print(table)


def _bench_check(out_file: Path, device: str, **counts) -> None:
    """A benchmark's options, checked before its model loads (a context needs 2 tokens, counts 1)."""
    from qsink.validate import at_least, check_device

    check_file_target(out_file, "--out")
    check_device(device)
    at_least(flags=True, **{k: (v, 2 if k == "ctx" else 1) for k, v in counts.items()})


def _bench_inputs(model: str, device: str = "auto"):
    """The model, its tokenizer and the held-out Austen text every benchmark runs on."""
    from qsink.data import load_corpus
    from qsink.models import load

    m, tok = load(model, device=device, log=_log)
    return m, tok, load_corpus("austen", "test", log=_log)


@bench_app.command("measure")
def bench_measure_cmd(
    model: str = typer.Argument("smollm2-135m"),
    samples: int = typer.Option(16, "--samples", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    repeats: int = typer.Option(2, "--repeats"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/measure.json"), "--out"),
) -> None:
    """Wall time of `qsink measure` / a plain forward with output_hidden_states=True (target <= 1.5)."""
    from qsink.bench import bench_measure, write_json

    _bench_check(out_file, device, samples=samples, ctx=ctx, repeats=repeats)
    m, tok, text = _bench_inputs(model, device)
    doc = bench_measure(m, tok, text, samples=samples, ctx=ctx, repeats=repeats, log=_log)
    doc["model"] = model
    write_json(doc, out_file)
    out.print(f"measure / plain forward = {doc['ratio']:.2f} (best of {repeats}: {doc['best_s']['measure']:.1f} s vs "
              f"{doc['best_s']['plain_forward_hidden_states']:.1f} s, {samples} x {ctx} tokens); wrote {out_file}", highlight=False)


@bench_app.command("ppl")
def bench_ppl_cmd(
    model: str = typer.Argument("smollm2-135m"),
    windows: int = typer.Option(8, "--windows", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    repeats: int = typer.Option(2, "--repeats"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/ppl.json"), "--out"),
) -> None:
    """fp perplexity wall time: lm-eval's rolling-loglikelihood scorer / qsink on the same windows (target >= 1), and agreement."""
    from qsink.bench import bench_ppl, write_json

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats)
    m, tok, text = _bench_inputs(model, device)
    doc = bench_ppl(m, tok, text, windows_n=windows, ctx=ctx, repeats=repeats, log=_log)
    doc["model"] = model
    write_json(doc, out_file)
    out.print(f"ppl qsink {doc['ppl_qsink']:.4f} vs lm-eval {doc['ppl_lm_eval_same_windows']:.4f} (rel diff {doc['ppl_rel_diff']:.1e}); "
              f"lm-eval / qsink wall time: {doc['speed_ratio_same_windows']:.2f} on the same windows, "
              f"{doc['speed_ratio_rolling_per_token']:.2f} per token for its own rolling windows; {out_file}", highlight=False)


@bench_app.command("quant")
def bench_quant_cmd(
    model: str = typer.Argument("smollm2-135m"),
    windows: int = typer.Option(8, "--windows", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    repeats: int = typer.Option(2, "--repeats"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/quant.json"), "--out"),
) -> None:
    """Perplexity wall time of w8a8 and w4a4+hadamard / fp on the same windows (targets 1.3 and 1.6)."""
    from qsink.bench import bench_quant, write_json
    from qsink.data import load_corpus

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats)
    m, tok, text = _bench_inputs(model, device)
    doc = bench_quant(m, tok, text, load_corpus("austen", "train", log=_log),
                      windows_n=windows, ctx=ctx, repeats=repeats, log=_log)
    doc["model"] = model
    write_json(doc, out_file)
    for k, v in doc["ratio"].items():
        out.print(f"{k} / fp = {v:.2f} (best of {repeats}: {doc['best_s'][k]:.1f} s vs {doc['best_s']['fp']:.1f} s)", highlight=False)
    out.print(f"wrote {out_file}")


@bench_app.command("train")
def bench_train_cmd(
    recipe: Path = typer.Argument(Path("recipes/variants/base.yaml")),
    steps: int = typer.Option(20, "--steps"),
    out_file: Path = typer.Option(Path("results/bench/train.json"), "--out"),
) -> None:
    """Training tokens/s against a minimal plain PyTorch loop (target >= 0.9), and MFU against a measured matmul peak."""
    from qsink.bench import bench_train, write_json
    from qsink.train import load_recipe

    _bench_check(out_file, "auto", steps=steps)
    doc = bench_train(load_recipe(recipe), steps=steps, log=_log)
    write_json(doc, out_file)
    out.print(f"qsink {doc['qsink_tokens_per_s']:.0f} tok/s vs plain loop {doc['plain_loop_tokens_per_s']:.0f} tok/s "
              f"= {doc['ratio']:.2f}; MFU {100 * doc['mfu']:.1f}% of a measured {doc['matmul_peak_gflops']:.0f} GFLOP/s; wrote {out_file}",
              highlight=False)


@bench_app.command("all")
def bench_all_cmd(
    model: str = typer.Argument("smollm2-135m"),
    recipe: Path = typer.Option(Path("recipes/variants/base.yaml"), "--recipe", help="Training recipe for the training ratio."),
    windows: int = typer.Option(8, "--windows", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    repeats: int = typer.Option(2, "--repeats"),
    train_steps: int = typer.Option(20, "--train-steps"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/all.json"), "--out"),
) -> None:
    """Every ratio in one run on one machine: schemes / fp, measure / forward, lm-eval / qsink, training / plain loop, MFU, peak RSS."""
    from qsink.bench import bench_measure, bench_ppl, bench_quant, bench_train, machine, peak_rss_mib, write_json
    from qsink.data import load_corpus
    from qsink.quant.schemes import SCHEMES
    from qsink.train import load_recipe

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats, train_steps=train_steps)
    m, tok, text = _bench_inputs(model, device)
    parts = {}
    cells = tuple((name, "none") for name in SCHEMES.names() if name != "fp")
    parts["quant"] = bench_quant(m, tok, text, load_corpus("austen", "train", log=_log), cells=cells, windows_n=windows,
                                 ctx=ctx, repeats=repeats, log=_log)
    parts["measure"] = bench_measure(m, tok, text, samples=windows, ctx=ctx, repeats=repeats, log=_log)
    parts["ppl"] = bench_ppl(m, tok, text, windows_n=windows, ctx=ctx, repeats=repeats, log=_log)
    rss_eval = peak_rss_mib()
    del m
    parts["train"] = bench_train(load_recipe(recipe), steps=train_steps, log=_log)
    doc = {"model": model, "recipe": str(recipe), "windows": windows, "ctx": ctx, "repeats": repeats,
           "ratios": {**{f"{k} / fp": v for k, v in parts["quant"]["ratio"].items()},
                      "measure / plain forward": parts["measure"]["ratio"],
                      "lm-eval same windows / qsink": parts["ppl"]["speed_ratio_same_windows"],
                      "lm-eval rolling per token / qsink": parts["ppl"]["speed_ratio_rolling_per_token"],
                      "qsink train / plain loop (tokens/s)": parts["train"]["ratio"]},
           "mfu": parts["train"]["mfu"], "matmul_peak_gflops": parts["train"]["matmul_peak_gflops"],
           "peak_rss_mib_after_eval": rss_eval, "peak_rss_mib": peak_rss_mib(), "machine": machine(), "parts": parts}
    write_json(doc, out_file)
    for k, v in doc["ratios"].items():
        out.print(f"{k}: {v:.2f}", highlight=False)
    out.print(f"MFU {100 * doc['mfu']:.1f}% of {doc['matmul_peak_gflops']:.0f} GFLOP/s; peak RSS {doc['peak_rss_mib']:.0f} MiB; "
              f"wrote {out_file}", highlight=False)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs.

    A BaseException, not KeyboardInterrupt: typer turns a KeyboardInterrupt into a silent return of 130."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# what an interrupted command leaves behind, and how to go on
KEPT = {"train": "the last checkpoint is kept; rerun with --resume to continue",
        "sweep": "finished jobs are kept; rerun the same command to run the rest",
        "data": "nothing half-written is kept; rerun the same command"}
KEPT_DEFAULT = "finished records are kept; rerun the same command to finish the rest"


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), "qsink")
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=args, standalone_mode=False)
    except QsinkError as e:
        sys.stderr.write("error: " + " ".join(str(e).split()) + "\n")
        sys.exit(e.exit_code)
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        sys.stderr.write(f"interrupted: qsink {command} stopped by {name}; {KEPT.get(command, KEPT_DEFAULT)}\n")
        sys.exit(128 + e.signum)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
