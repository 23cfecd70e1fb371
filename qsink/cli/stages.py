"""The commands that compute: evaluate, measure, ablate, train and sweep. Each parses its options
into the stage's settings object and calls the stage's workflow; what is left here is rendering."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.progress import TextColumn

from qsink.cli.common import DEVICE_HELP, EVAL, MEASURE, PROFILE, app, log, progress_bars, stdout, windows_progress
from qsink.cli.render import print_attribution, print_gradient_sinks, print_profile, print_vocab_scan
from qsink.errors import QsinkError
from qsink.evaluate.settings import EvalSettings
from qsink.measure.options import MeasureOptions, ProfileSettings
from qsink.validate import check_file_target, split_names


@app.command()
def evaluate(
    ctx_: typer.Context,
    models: Optional[List[str]] = typer.Argument(None, help="Built-in names, .gguf files, Hugging Face checkpoint directories or hub ids (org/name[@REVISION][:FILE.gguf])."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="A YAML evaluation matrix (recipes/eval/*.yaml); command-line options win."),
    schemes: List[str] = typer.Option(["fp"], "--scheme", "-s", help="Scheme name(s), comma-separated or repeated; 'qsink schemes' lists them. NAME+kvB adds B-bit k/v quantization."),
    handling: List[str] = typer.Option(["none"], "--handling", help="Outlier-handling method(s), comma-separated or repeated."),
    tasks: List[str] = typer.Option([], "--task", "-t", help="Downstream task(s) scored through lm-eval on every cell: qsink_cloze, qsink_sentiment, or an lm-eval task name."),
    limit: Optional[int] = typer.Option(EVAL.limit, "--limit", help="Items per task (default: all)."),
    num_fewshot: Optional[int] = typer.Option(EVAL.num_fewshot, "--num-fewshot", help="Few-shot examples per task item."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Corpus NAME[:SPLIT] (default austen:test) or hf:NAME[:CONFIG]."),
    text: Optional[Path] = typer.Option(None, "--text", help="Evaluate on this UTF-8 text file instead of a corpus."),
    ctx: int = typer.Option(EVAL.ctx, "--ctx", help="Tokens per window."),
    max_tokens: int = typer.Option(EVAL.max_tokens, "--max-tokens", help="Text tokens to use (0 = the whole text)."),
    batch_size: int = typer.Option(EVAL.batch_size, "--batch-size", help="Windows per forward pass."),
    calib: int = typer.Option(EVAL.calib, "--calib", help="Calibration windows for quantized cells (seeded, from --calib-data)."),
    calib_data: str = typer.Option(EVAL.calib_data, "--calib-data", help="Calibration corpus NAME[:SPLIT]; never the test split."),
    backend: str = typer.Option(EVAL.backend, "--backend", help="fake (qsink's fake quantization) or bnb (bitsandbytes kernels)."),
    include: List[str] = typer.Option(list(EVAL.include), "--include", help="Also quantize lm_head and/or embed (default: they stay in high precision)."),
    profile_samples: int = typer.Option(EVAL.profile_samples, "--profile-samples", help="Windows for each model's spike/sink profile, attached to its records (0 = none)."),
    kld_topk: int = typer.Option(EVAL.kld_topk, "--kld-topk", help="KL divergence against fp over the fp model's top-K tokens plus a rest bucket, from a stored reference (0 = exact over the whole vocabulary, the fp model runs beside every cell)."),
    sqnr: bool = typer.Option(EVAL.sqnr, "--sqnr/--no-sqnr", help="Also measure each quantized linear's SQNR (one more pass over the calibration windows per cell)."),
    handling_options: List[str] = typer.Option(list(EVAL.handling_options), "--handling-option", help="HANDLING.OPTION=VALUE, repeated (spinquant.steps=50): an option of one outlier-handling method, part of its cells' keys."),
    dtype: str = typer.Option(EVAL.dtype, "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option(EVAL.device, "--device", help=DEVICE_HELP),
    seed: int = typer.Option(EVAL.seed, "--seed"),
    out: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON records."),
    force: bool = typer.Option(False, "--force", help="Recompute cells whose record already exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow custom model code from a checkpoint directory or hub repo."),
) -> None:
    """The matrix models x schemes x outlier handling (fp once per model): perplexity, downstream accuracy,
    the model's spike profile (and, with --sqnr, each linear's SQNR), one resumable JSON record per cell."""
    from qsink.evaluate.plan import load_eval_recipe, plan_matrix, with_recipe
    from qsink.models.resolve import precheck

    opts = {name: value for name, value in ctx_.params.items() if name not in ("recipe", "text", "force")}
    if recipe:
        given = {name for name in opts if getattr(ctx_.get_parameter_source(name), "name", None) == "COMMANDLINE"}
        opts = with_recipe(load_eval_recipe(recipe), opts, given)  # typer vendors click: sources compare by name
    if not opts["models"]:
        raise QsinkError("name at least one model (or pass --recipe); 'qsink models' lists the built-in ones")
    precheck(split_names(opts["models"]), log=log)  # a model that cannot be had is told before torch loads
    from qsink.evaluate.runner import run_matrix
    from qsink.records import RecordStore

    cells, dropped, tasks, settings = plan_matrix(opts, force=force)
    for reason in dropped:
        log(f"skipping {reason}")
    store = RecordStore(opts["out"])
    specs = split_names(opts["models"])
    with progress_bars() as progress:
        overall = progress.add_task(f"matrix: {len(specs)} model(s) x {len(cells)} cell(s)", total=len(specs) * len(cells))
        corpus, outcomes = run_matrix(specs, cells, settings, store, data=opts["data"],
                                      text_file=text, log=log, progress_factory=windows_progress(progress),
                                      on_cell=lambda o: progress.advance(overall))
    table = Table(title=f"perplexity on {corpus.name} (ctx {settings.ctx})")
    cols = ["model", "cell", "status", "ppl", "Δppl %", "bits/byte", "KLD", "same top", "Δp RMS", "SQNR dB", "spike", "sinks"]
    cols += [t.removeprefix("qsink_") for t in tasks] + ["tok/s"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "cell", "status") else "right")
    for o in outcomes:
        m, t, prof = o.record["metrics"], o.record["timing"], o.record.get("profile") or {}
        status = "cached" if o.skipped else o.record["status"]
        fmt = lambda v, f: f.format(v) if v is not None else "-"  # noqa: E731
        accs = [fmt(m.get("tasks", {}).get(name, {}).get("acc"), "{:.3f}") for name in tasks]
        table.add_row(o.model, o.cell.label, status, fmt(m.get("ppl"), "{:.3f}"), fmt(m.get("delta_ppl_pct"), "{:+.2f}"),
                      fmt(m.get("bpb"), "{:.4f}"), fmt(m.get("kld_mean"), "{:.4f}"), fmt(m.get("same_top"), "{:.3f}"),
                      fmt(m.get("dp_rms"), "{:.4f}"), fmt(m.get("sqnr_db_mean"), "{:.1f}"), fmt(prof.get("spike_magnitude"), "{:.4g}"),
                      fmt(prof.get("sink_ratio"), "{:.2f}"), *accs, f"{t.get('tokens_per_s', 0):.0f}")
        if o.record["status"] != "ok":
            log(f"{o.model} [{o.cell.label}] failed: {o.record['error']}")
    stdout.print(table)
    skipped = sum(o.skipped for o in outcomes)
    if skipped:
        log(f"{skipped} cell(s) already had a record and were not recomputed (--force recomputes them)")
    log(f"records in {store.root}/; 'qsink leaderboard --results {store.root}' tabulates them")


@app.command()
def measure(
    model: str = typer.Argument(..., help="Built-in name, .gguf file, Hugging Face checkpoint directory or hub id (org/name[@REVISION][:FILE.gguf])."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Corpus NAME[:SPLIT] (default austen:test) or hf:NAME[:CONFIG]."),
    text: Optional[Path] = typer.Option(None, "--text", help="Profile on this UTF-8 text file instead of a corpus."),
    samples: int = typer.Option(MEASURE.samples, "--samples", "-n", help="Number of windows."),
    ctx: int = typer.Option(MEASURE.ctx, "--ctx", help="Tokens per window."),
    top_k: int = typer.Option(PROFILE.top_k, "--top-k", help="Largest activations kept per layer."),
    massive_abs: float = typer.Option(PROFILE.massive_abs, "--massive-abs", help="A massive activation has |h| above this ..."),
    massive_ratio: float = typer.Option(PROFILE.massive_ratio, "--massive-ratio", help="... and above this times the layer median."),
    sink_eps: float = typer.Option(PROFILE.sink_eps, "--sink-eps", help="A head is a sink if its mean attention on key 0 exceeds this."),
    attn_windows: Optional[int] = typer.Option(PROFILE.attn_windows, "--attn-windows", help="Windows that run eager attention for sink statistics (default: all)."),
    batch_size: int = typer.Option(MEASURE.batch_size, "--batch-size"),
    dtype: str = typer.Option(MEASURE.dtype, "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option(MEASURE.device, "--device", help=DEVICE_HELP),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Directory for the profile JSON and its plots."),
    force: bool = typer.Option(False, "--force", help="Recompute even if this profile exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    attribution: bool = typer.Option(False, "--attribution", help="Also find the sub-layers that inject and remove each spike channel, and the injecting FFN's quadratic-form spectrum."),
    vocab_scan: bool = typer.Option(False, "--vocab-scan", help="Also place every vocabulary item at position 0 and count those that spike."),
    scan_sample: Optional[int] = typer.Option(MEASURE.sample, "--sample", help="--vocab-scan: a seeded sample of this many items instead of the whole vocabulary."),
    scan_layers: Optional[str] = typer.Option(None, "--scan-layers", help="--vocab-scan: residual layers to check (default: the first 3 layers of the position-0 plateau)."),
    gradients: bool = typer.Option(False, "--gradients", help="Also back-propagate the LM loss and report the gradient-sink ratio per layer (weights untouched)."),
    grad_windows: int = typer.Option(MEASURE.grad_windows, "--grad-windows", help="--gradients: windows back-propagated, one at a time."),
) -> None:
    """Massive activations, attention sinks and outlier statistics of one model, in one pass."""
    from qsink.models.resolve import precheck

    precheck([model], log=log)  # a model that cannot be had is told before torch loads
    from qsink.data import resolve_data
    from qsink.measure.options import parse_layers
    from qsink.measure.plots import plot_profile
    from qsink.measure.workflow import measure_model
    from qsink.models import resolve
    from qsink.records import RecordStore

    options = MeasureOptions(ctx=ctx, samples=samples, batch_size=batch_size, dtype=dtype, device=device,
                             trust_remote_code=trust_remote_code, force=force, attribution=attribution,
                             vocab_scan=vocab_scan, sample=scan_sample, scan_layers=parse_layers(scan_layers),
                             gradients=gradients, grad_windows=grad_windows)
    settings = ProfileSettings(top_k=top_k, massive_abs=massive_abs, massive_ratio=massive_ratio, sink_eps=sink_eps,
                               attn_windows=attn_windows)
    store = RecordStore(out_dir)
    store.ensure_writable()
    res = resolve(model)  # a bad model path fails before any text is fetched
    corpus = resolve_data(data, str(text) if text else None, log=log)
    with progress_bars() as progress:
        outcome = measure_model(res, corpus, store, options, settings, log=log,
                                progress_factory=windows_progress(progress))
    doc, name = outcome.profile.to_dict(), outcome.profile.data["model"]["name"]
    plots = plot_profile(doc, out_dir, outcome.path.stem, name)
    print_profile(name, doc)
    if doc.get("attribution"):
        print_attribution(doc["attribution"])
    if doc.get("vocab_scan"):
        print_vocab_scan(doc["vocab_scan"])
    if doc.get("gradient_sinks"):
        print_gradient_sinks(doc["gradient_sinks"])
    if outcome.skipped:
        log("this profile already existed and was not recomputed (--force recomputes it)")
    log(f"profile: {outcome.path}")
    log("plots: " + ", ".join(str(p) for p in plots))


@app.command("ablate")
def ablate_cmd(
    model: str = typer.Argument(..., help="Built-in name, .gguf file, Hugging Face checkpoint directory or hub id (org/name[@REVISION][:FILE.gguf])."),
    scheme: str = typer.Option(..., "--scheme", "-s", help="The scheme to take apart ('qsink schemes' lists them)."),
    handling: str = typer.Option("none", "--handling", help="Outlier-handling method applied before the ablation."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Evaluation text NAME[:SPLIT] (default austen:test)."),
    ctx: int = typer.Option(EVAL.ctx, "--ctx"),
    max_tokens: int = typer.Option(EVAL.max_tokens, "--max-tokens"),
    calib: int = typer.Option(EVAL.calib, "--calib", help="Calibration windows."),
    calib_data: str = typer.Option(EVAL.calib_data, "--calib-data", help="Calibration text (a train or validation split)."),
    parts: str = typer.Option("act,weight", "--parts", help="What to exempt, one linear at a time: act, weight or both."),
    only: Optional[str] = typer.Option(None, "--only", help="Only linears whose name matches this regular expression (e.g. 'mlp.down_proj', '^1[01]\\.')."),
    batch_size: int = typer.Option(8, "--batch-size"),
    seed: int = typer.Option(EVAL.seed, "--seed", help="Seed of the calibration windows (as in evaluate)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Directory for the JSON result."),
    force: bool = typer.Option(False, "--force", help="Recompute even if this ablation is stored."),
) -> None:
    """Which linear layer's quantization does the damage: each linear's activations (or weights) kept in
    full precision in turn, the rest quantized, perplexity measured again."""
    from qsink.models.resolve import precheck

    precheck([model], log=log)  # a model that cannot be had is told before torch loads
    from qsink.data import resolve_data
    from qsink.evaluate.ablate import ablate, check_request
    from qsink.models import resolve
    from qsink.records import RecordStore

    settings = EvalSettings(ctx=ctx, max_tokens=max_tokens, batch_size=batch_size, calib=calib, calib_data=calib_data,
                            seed=seed, device=device)
    want = tuple(split_names([parts]))
    check_request(scheme, handling, settings, want, only)
    store = RecordStore(out_dir)
    store.ensure_writable()
    res = resolve(model)  # a bad model path fails before any text is fetched
    text, calib_text = resolve_data(data, None, log=log), resolve_data(calib_data, None, log=log)
    with progress_bars("exemptions") as progress:
        outcome = ablate(res, scheme, handling, text, calib_text, settings, store, parts=want, only=only, force=force,
                         log=log, progress_factory=windows_progress(progress))
    doc = outcome.doc
    table = Table(title=f"{doc['model']['name']} {scheme}+{handling}: fp ppl {doc['fp_ppl']:.4f}, quantized {doc['ppl']:.4f} "
                        f"({doc['delta_ppl_pct']:+.2f} %); one linear exempted at a time")
    for col in ("linear", "part", "ppl", "Δppl %", "recovered"):
        table.add_column(col)
    for r in doc["rows"]:
        table.add_row(r["linear"], r["part"], f"{r['ppl']:.4f}", f"{r['delta_ppl_pct']:+.3f}", f"{r['recovered']:.2f}")
    stdout.print(table)
    if outcome.skipped:
        log("this ablation already existed and was not recomputed (--force recomputes it)")
    log(f"wrote {outcome.path}" if not outcome.skipped else f"record: {outcome.path}")


@app.command("advise")
def advise_cmd(
    model: str = typer.Argument(..., help="Built-in name, .gguf file, Hugging Face checkpoint directory or hub id (org/name[@REVISION][:FILE.gguf])."),
    budgets: str = typer.Option("0.01,0.05", "--budget", help="The largest mean KL divergence from the fp model (nats per token) a recipe may reach; several, comma-separated, give one recipe each (the measurements are shared)."),
    bits_max: Optional[float] = typer.Option(None, "--bits-max", help="The most stored bits per weight (scales included) a recipe may take."),
    formats: str = typer.Option("int,gguf", "--formats", help="Format families to choose from: int, gguf, mx, nv (a recipe stays within one)."),
    act: Optional[str] = typer.Option(None, "--act", help="Also quantize every linear's input: int8, int4, mxfp4, nvfp4 or fp8; several, comma-separated, and the fewest bits that meet the budget win (default: weights only)."),
    handling: List[str] = typer.Option([], "--handling", help="Outlier-handling methods to consider (default: none; with --act also token-keep)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Evaluation text NAME[:SPLIT] (default austen:test) for the verification."),
    ctx: int = typer.Option(EVAL.ctx, "--ctx", help="Tokens per window."),
    max_tokens: int = typer.Option(EVAL.max_tokens, "--max-tokens", help="Evaluation tokens for the verification."),
    calib: int = typer.Option(EVAL.calib, "--calib", help="Calibration windows: quantization, sensitivities and their scaling."),
    calib_data: str = typer.Option(EVAL.calib_data, "--calib-data", help="Calibration text (a train or validation split)."),
    batch_size: int = typer.Option(EVAL.batch_size, "--batch-size"),
    handling_options: List[str] = typer.Option([], "--handling-option", help="HANDLING.OPTION=VALUE, repeated."),
    rounds: int = typer.Option(3, "--rounds", help="Searches at most, each verified; a miss tightens the next one's target."),
    tasks: List[str] = typer.Option([], "--task", "-t", help="Downstream task(s) scored on the verified cells too (as in evaluate)."),
    limit: Optional[int] = typer.Option(EVAL.limit, "--limit", help="Items per task (default: all)."),
    dtype: str = typer.Option(EVAL.dtype, "--dtype", help="fp32, bf16 or fp16."),
    device: str = typer.Option(EVAL.device, "--device", help=DEVICE_HELP),
    seed: int = typer.Option(EVAL.seed, "--seed"),
    out: Path = typer.Option(Path("runs"), "--out", help="Directory for the records (the advised cell and its comparisons)."),
    recipe_out: Optional[Path] = typer.Option(None, "--recipe-out", help="Where to write the advised recipe (default: OUT/NAME.yaml)."),
) -> None:
    """The cheapest recipe (a format for the model, higher formats for its sensitive linears, a handling
    method) whose KL divergence from the fp model stays under --budget, chosen from measured per-linear
    sensitivities, then verified by evaluation beside the uniform format and the GGUF file type of its size."""
    from qsink.models.resolve import precheck

    precheck([model], log=log)
    from qsink.data import resolve_data
    from qsink.evaluate.advise import advise
    from qsink.records import RecordStore

    settings = EvalSettings(ctx=ctx, max_tokens=max_tokens, batch_size=batch_size, calib=calib, calib_data=calib_data,
                            seed=seed, device=device, dtype=dtype, profile_samples=0,
                            handling_options=tuple(handling_options), tasks=tuple(split_names(tasks)), limit=limit)
    if settings.tasks:
        from qsink.evaluate.lmeval import check_tasks

        check_tasks(list(settings.tasks))
    try:
        wanted = [float(b) for b in split_names([budgets])]
    except ValueError:
        raise QsinkError(f"--budget {budgets!r}: give KL divergences as numbers, e.g. --budget 0.01,0.05") from None
    if not wanted:
        raise QsinkError("--budget names no budget; e.g. --budget 0.05")
    if recipe_out is not None and len(wanted) > 1:
        raise QsinkError("--recipe-out names one file, but --budget gives several budgets; drop --recipe-out (each recipe "
                         "goes to OUT/NAME.yaml)")
    from qsink.evaluate.advise import check_request

    for budget in wanted:
        check_request(budget, split_names([formats]), act, split_names(handling) or None, bits_max, rounds, settings)
    if recipe_out is not None:
        check_file_target(recipe_out, "--recipe-out")
    store = RecordStore(out)
    store.ensure_writable()
    text, calib_text = resolve_data(data, None, log=log), resolve_data(calib_data, None, log=log)
    from qsink.evaluate.advise import BudgetNotMet
    from qsink.quant.mixture import format_name

    missed: list[QsinkError] = []
    for budget in wanted:
        try:
            with progress_bars() as progress:
                a = advise(model, budget, text, calib_text, settings, store, families=split_names([formats]), act=act,
                           handlings=split_names(handling) or None, bits_max=bits_max, rounds=rounds,
                           recipe_out=recipe_out, data=data, log=log, progress_factory=windows_progress(progress))
        except BudgetNotMet as e:
            if len(wanted) == 1:
                raise
            log(f"budget {budget:g}: {e}")
            missed.append(e)
            continue
        _print_advice(a, budget, format_name)
        if not a.record["advice"]["meets_budget"]:
            missed.append(QsinkError(f"budget {budget:g} missed after {a.rounds} round(s)"))
    if missed:
        raise typer.Exit(2)


def _print_advice(a, budget: float, format_name) -> None:
    table = Table(title=f"{a.model}: KLD budget {budget:g} ({a.rounds} round(s))")
    tasks = list(dict.fromkeys(t for c in a.comparisons for t in c["tasks"]))
    for col in ("", "scheme", "handling", "bits/weight", "predicted KLD", "verified KLD", "Δppl %", "same top", *tasks):
        table.add_column(col.removeprefix("qsink_"), justify="left" if col in ("", "scheme", "handling") else "right")
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for c in a.comparisons:
        table.add_row(c["what"], c["scheme"], c["handling"], f(c["bits"], ".3f"), f(c["predicted"], ".4f"),
                      f(c["kld"], ".4f"), f(c["delta_ppl_pct"], "+.2f"), f(c["same_top"], ".3f"),
                      *[f(c["tasks"].get(t), ".3f") for t in tasks])
    stdout.print(table)
    raised = {n: fmt for n, fmt in a.scheme.overrides}
    if raised:
        log(f"{len(raised)} linear(s) raised above {format_name(a.scheme.weight)}: "
            + ", ".join(f"{n} {format_name(fmt)}" for n, fmt in list(raised.items())[:12]) + (" ..." if len(raised) > 12 else ""))
    if not a.record["advice"]["meets_budget"]:
        log(f"the verified KLD {a.record['advice']['verified_kld']:.4g} misses the budget {budget:g} after {a.rounds} "
            "round(s); raise --rounds, --calib or the budget")
    log(f"record: {a.record_path}")
    log(f"recipe: {a.recipe_path} (qsink evaluate --recipe {a.recipe_path} evaluates it again)")


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
    with progress_bars("steps", TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s")) as progress:
        task = progress.add_task(f"train {r.name}", total=r.steps, loss=float("nan"), tps=0.0)

        def on_step(step, loss, tps):
            progress.update(task, completed=step, loss=loss, tps=tps)

        result = run_training(r, out_dir, resume=resume, device=pick_device(device), log=log, on_step=on_step)
    stdout.print(f"trained {r.name} to step {result.step}: train loss {result.train_loss:.4f}, "
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
        log(f"skipping {reason}")
    if plan:
        done = status(sw)
        table = Table(title=f"sweep {sw.name}: {len(sw.jobs)} jobs, {sum(done.values())} done (out {sw.out})")
        for col in ("job", "after", "done"):
            table.add_column(col)
        for job in sw.jobs:
            table.add_row(job.key, ", ".join(job.deps) or "-", "yes" if done[job.key] else "no")
        stdout.print(table)
        return
    n = workers if workers > 0 else (os.cpu_count() or 1)
    with progress_bars("jobs") as progress:
        bar = progress.add_task(f"sweep {sw.name} ({executor})", total=len(sw.jobs))

        def on_result(job, summary):
            progress.advance(bar)
            if summary["status"] in ("failed", "blocked"):
                log(f"{job.key}: {summary['status']}: {summary['detail']}")

        results = execute(sw, executor=executor, workers=n, address=address, on_result=on_result)
    counts = {k: sum(r["status"] == k for r in results) for k in ("done", "skipped", "failed", "blocked")}
    stdout.print(f"sweep {sw.name}: {counts['done']} run, {counts['skipped']} already done, {counts['failed']} failed, "
              f"{counts['blocked']} blocked; records in {sw.records}/", highlight=False)
    if counts["failed"] or counts["blocked"]:
        raise QsinkError(f"{counts['failed'] + counts['blocked']} job(s) did not finish; fix the cause above and rerun "
                         "the same command (finished jobs are kept)")
