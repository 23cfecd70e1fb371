"""``qsink bench``: performance ratios measured side by side in one run (never timed tests)."""

from __future__ import annotations

from pathlib import Path

import typer

from qsink.cli.common import DEVICE_HELP, bench_app, log, stdout
from qsink.validate import at_least, check_device, check_file_target


def _bench_check(out_file: Path, device: str, **counts) -> None:
    """A benchmark's options, checked before its model loads (a context needs 2 tokens, counts 1)."""
    check_file_target(out_file, "--out")
    check_device(device)
    at_least(flags=True, **{k: (v, 2 if k == "ctx" else 1) for k, v in counts.items()})


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
    from qsink.bench import bench_inputs, bench_measure, write_json

    _bench_check(out_file, device, samples=samples, ctx=ctx, repeats=repeats)
    m, tok, text = bench_inputs(model, device, log)
    doc = bench_measure(m, tok, text, samples=samples, ctx=ctx, repeats=repeats, log=log)
    doc["model"] = model
    write_json(doc, out_file)
    stdout.print(f"measure / plain forward = {doc['ratio']:.2f} (best of {repeats}: {doc['best_s']['measure']:.1f} s vs "
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
    from qsink.bench import bench_inputs, bench_ppl, write_json

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats)
    m, tok, text = bench_inputs(model, device, log)
    doc = bench_ppl(m, tok, text, windows_n=windows, ctx=ctx, repeats=repeats, log=log)
    doc["model"] = model
    write_json(doc, out_file)
    stdout.print(f"ppl qsink {doc['ppl_qsink']:.4f} vs lm-eval {doc['ppl_lm_eval_same_windows']:.4f} (rel diff {doc['ppl_rel_diff']:.1e}); "
              f"lm-eval / qsink wall time: {doc['speed_ratio_same_windows']:.2f} on the same windows, "
              f"{doc['speed_ratio_rolling_per_token']:.2f} per token for its own rolling windows; {out_file}", highlight=False)


@bench_app.command("quant")
def bench_quant_cmd(
    model: str = typer.Argument("smollm2-135m"),
    cells: list[str] = typer.Option(["w8a8,w4a4+hadamard"], "--cells",
                                    help="Cells to time against fp, SCHEME or SCHEME+HANDLING, comma-separated or repeated."),
    windows: int = typer.Option(8, "--windows", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    repeats: int = typer.Option(2, "--repeats"),
    batch_size: int = typer.Option(4, "--batch-size"),
    kld: bool = typer.Option(True, "--kld/--no-kld", help="Also time each cell with its KL-divergence statistics (target <= 1.1x the cell without)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/quant.json"), "--out"),
) -> None:
    """Perplexity wall time and tokens/s of each cell / fp on the same windows (targets: 1.3 for integer schemes,
    1.6 for w4a4+hadamard), and the peak memory of an fp evaluation."""
    from qsink.bench import bench_inputs, bench_quant, write_json
    from qsink.data import load_corpus
    from qsink.evaluate.plan import parse_cells

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats, batch_size=batch_size)
    pairs = parse_cells(cells)
    m, tok, text = bench_inputs(model, device, log)
    doc = bench_quant(m, tok, text, load_corpus("austen", "train", log=log), cells=pairs,
                      windows_n=windows, ctx=ctx, repeats=repeats, batch_size=batch_size, kld=kld, log=log)
    doc["model"] = model
    write_json(doc, out_file)
    tps = doc["tokens_per_s"]
    stdout.print(f"fp: {tps['fp']:.0f} tokens/s; peak RSS of the fp evaluation {doc['peak_rss_mib_fp_eval']:.0f} MiB", highlight=False)
    for k, v in doc["ratio"].items():
        cost = f"; with KLD {doc['kld_cost'][k]:.2f}x (KLD {doc['kld_mean'][k]:.4f})" if kld else ""
        stdout.print(f"{k} / fp = {v:.2f} (best of {repeats}: {doc['best_s'][k]:.1f} s vs {doc['best_s']['fp']:.1f} s; "
                     f"{tps[k]:.0f} tokens/s{cost})", highlight=False)
    if kld:
        r = doc["kld_reference"]
        stdout.print(f"fp reference: {r['bytes'] / 2**20:.1f} MiB for {r['positions']} positions (full logits "
                     f"{r['full_logits_bytes'] / 2**20:.0f} MiB); building it added {r['build_s']:.1f} s to a "
                     f"{r['fp_pass_with_reference_s']:.1f} s fp pass", highlight=False)
    stdout.print(f"wrote {out_file}")


@bench_app.command("matrix")
def bench_matrix_cmd(
    model: str = typer.Argument("smollm2-135m"),
    schemes: list[str] = typer.Option(["w8a8,w8a8-static,w4a16,w4a8,w4a4,mxfp4,nvfp4,nf4"], "--schemes",
                                      help="Schemes of the matrix, comma-separated or repeated."),
    handling: list[str] = typer.Option(["none,smoothquant,hadamard,token-keep"], "--handling",
                                       help="Outlier-handling methods, comma-separated or repeated (the planner drops what makes no sense)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Evaluation tokens per cell."),
    ctx: int = typer.Option(512, "--ctx"),
    batch_size: int = typer.Option(4, "--batch-size"),
    sqnr: bool = typer.Option(False, "--sqnr/--no-sqnr", help="Include the per-linear SQNR pass in every cell."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 or bf16."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/matrix.json"), "--out"),
) -> None:
    """The whole evaluation matrix of one model against its floor (a plain forward of each cell's model over the
    same windows, timed in the same run; target matrix / floor <= 1.25), with each cell's time split."""
    from qsink.bench import bench_matrix, write_json
    from qsink.cli.common import progress_bars, windows_progress
    from qsink.evaluate.settings import EvalSettings
    from qsink.validate import split_names

    _bench_check(out_file, device, max_tokens=max_tokens, ctx=ctx, batch_size=batch_size)
    settings = EvalSettings(max_tokens=max_tokens, ctx=ctx, batch_size=batch_size, sqnr=sqnr, dtype=dtype, device=device)
    with progress_bars() as progress:
        doc = bench_matrix(model, split_names(schemes), split_names(handling), settings=settings, log=log,
                           progress_factory=windows_progress(progress))
    write_json(doc, out_file)
    for row in doc["per_cell"]:
        stdout.print(f"{row['cell']:28s} copy {row['copy_s']:5.2f}  handling {row['handling_s'] + row['rewrite_s']:5.2f}  encode "
                     f"{row['encode_s']:5.2f}  calibration {row['calibration_s']:5.2f} ({row['calibration']})  sqnr "
                     f"{row['sqnr_s']:5.2f}  evaluation {row['evaluation_s']:6.2f}  write {row['write_s']:.3f}  "
                     f"plain forward {row['plain_forward_s'] or 0:6.2f}", highlight=False)
    stdout.print(f"{doc['cells']} cells: matrix {doc['matrix_s'] / 60:.2f} min, floor {doc['floor_s'] / 60:.2f} min, "
                 f"matrix / floor = {doc['ratio']:.2f} (model load, windows, profile {doc['profile_s']:.1f} s and "
                 f"references: {doc['unaccounted_s']:.1f} s); wrote {out_file}", highlight=False)


@bench_app.command("advise")
def bench_advise_cmd(
    model: str = typer.Argument("smollm2-135m"),
    budgets: str = typer.Option("0.01,0.05", "--budget", help="KLD budgets, comma-separated (qsink advise's default)."),
    formats: str = typer.Option("int,gguf", "--formats"),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Evaluation tokens per cell, for the advisor's verification and the matrix."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/advise.json"), "--out"),
) -> None:
    """qsink advise's wall time from a cold start, against one full evaluation matrix of the same model timed in
    the same run (target: a few matrices)."""
    from qsink.bench import bench_advise, write_json
    from qsink.cli.common import progress_bars, windows_progress
    from qsink.evaluate.settings import EvalSettings
    from qsink.validate import split_names

    from qsink.errors import QsinkError
    from qsink.evaluate.advise import check_request

    _bench_check(out_file, device, max_tokens=max_tokens)
    settings = EvalSettings(max_tokens=max_tokens, device=device, profile_samples=0)
    try:
        wanted = tuple(float(b) for b in split_names([budgets]))
    except ValueError:
        raise QsinkError(f"--budget {budgets!r}: give KL divergences as numbers, e.g. --budget 0.01,0.05") from None
    for b in wanted or (0.0,):
        check_request(b, split_names([formats]), None, None, None, 1, settings)
    with progress_bars() as progress:
        doc = bench_advise(model, wanted, tuple(split_names([formats])),
                           settings=settings, log=log, progress_factory=windows_progress(progress))
    write_json(doc, out_file)
    for r in doc["runs"]:
        stdout.print(f"budget {r['budget']:g}: {r['bits_per_weight']:.3f} bits/weight, verified KLD {r['verified_kld']:.4f}; "
                     f"measure {r['measure_s']:.0f} s, search {r['search_s']:.1f} s, verify {r['verify_s']:.0f} s", highlight=False)
    stdout.print(f"advise {doc['advise_s'] / 60:.2f} min, matrix ({doc['matrix_cells']} cells) {doc['matrix_s'] / 60:.2f} min, "
                 f"advise / matrix = {doc['ratio']:.2f}; wrote {out_file}", highlight=False)


@bench_app.command("dtype")
def bench_dtype_cmd(
    model: str = typer.Argument("smollm2-135m"),
    cells: list[str] = typer.Option(["fp,w8a8,w8a8-static,w4a16,w4a4+hadamard,nvfp4,gguf-q4_k_m"], "--cells",
                                    help="Cells to compare, SCHEME or SCHEME+HANDLING, comma-separated or repeated."),
    dtype: str = typer.Option("bf16", "--dtype", help="The dtype set beside fp32: bf16 or fp16."),
    windows: int = typer.Option(8, "--windows", "-n"),
    ctx: int = typer.Option(512, "--ctx"),
    batch_size: int = typer.Option(4, "--batch-size"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/dtype.json"), "--out"),
) -> None:
    """Each cell computed in fp32 and in --dtype on the same windows: perplexity drift, KL divergence against the fp32
    fp model, and the wall-time ratio (what --dtype bf16 costs in accuracy and buys in speed on this machine)."""
    from qsink.bench import bench_dtype, bench_inputs, write_json
    from qsink.data import load_corpus
    from qsink.evaluate.plan import parse_cells
    from qsink.validate import check_dtype

    _bench_check(out_file, device, windows=windows, ctx=ctx, batch_size=batch_size)
    check_dtype(dtype)
    pairs = [("fp", "none") if s == "fp" else (s, h) for s, h in parse_cells(cells, allow_fp=True)]
    m, tok, text = bench_inputs(model, device, log)
    doc = bench_dtype(m, tok, text, load_corpus("austen", "train", log=log), cells=pairs, dtype=dtype, windows_n=windows,
                      ctx=ctx, batch_size=batch_size, log=log)
    doc["model"] = model
    write_json(doc, out_file)
    for r in doc["cells"]:
        stdout.print(f"{r['cell']:20s} ppl fp32 {r['fp32']['ppl']:.4f}  {dtype} {r[dtype]['ppl']:.4f} "
                     f"({r['ppl_drift_pct']:+.3f} %)  KLD vs fp32 fp: {r['fp32']['kld_vs_fp32_fp']:.5f} -> "
                     f"{r[dtype]['kld_vs_fp32_fp']:.5f}  wall {dtype} / fp32 {r['wall_ratio']:.2f}", highlight=False)
    stdout.print(f"wrote {out_file}")


@bench_app.command("spinquant")
def bench_spinquant_cmd(
    model: str = typer.Argument("smollm2-135m"),
    scheme: str = typer.Option("w4a4", "--scheme", help="The scheme whose activation quantization the rotations learn."),
    steps: int = typer.Option(100, "--steps"),
    calib: int = typer.Option(4, "--calib", help="Calibration windows (one per step, in turn)."),
    ctx: int = typer.Option(512, "--ctx"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    out_file: Path = typer.Option(Path("results/bench/spinquant.json"), "--out"),
) -> None:
    """SpinQuant's rotation training at its default settings: time per step and peak memory on this machine."""
    from qsink.bench import bench_inputs, bench_spinquant, write_json
    from qsink.data import load_corpus
    from qsink.quant import get_scheme

    _bench_check(out_file, device, steps=steps, calib=calib, ctx=ctx)
    get_scheme(scheme)
    m, tok, _ = bench_inputs(model, device, log)
    doc = bench_spinquant(m, tok, load_corpus("austen", "train", log=log), scheme=scheme, steps=steps, calib=calib,
                          ctx=ctx, log=log)
    doc["model"] = model
    write_json(doc, out_file)
    peak = doc["peak_rss_during_mib"] if doc["peak_gpu_mib"] is None else doc["peak_gpu_mib"]
    stdout.print(f"{model} {scheme}: {steps} steps in {doc['train_s'] / 60:.1f} min ({doc['s_per_step']:.2f} s/step), "
                 f"peak memory {peak if peak is None else round(peak)} MiB; loss {doc['loss_at_hadamard']:.4f} at the "
                 f"Hadamard start -> {doc['loss_learned']:.4f}; wrote {out_file}", highlight=False)


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
    doc = bench_train(load_recipe(recipe), steps=steps, log=log)
    write_json(doc, out_file)
    stdout.print(f"qsink {doc['qsink_tokens_per_s']:.0f} tok/s vs plain loop {doc['plain_loop_tokens_per_s']:.0f} tok/s "
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
    from qsink.bench import bench_all, write_json

    _bench_check(out_file, device, windows=windows, ctx=ctx, repeats=repeats, train_steps=train_steps)
    doc = bench_all(model, recipe, windows=windows, ctx=ctx, repeats=repeats, train_steps=train_steps, device=device, log=log)
    write_json(doc, out_file)
    for k, v in doc["ratios"].items():
        stdout.print(f"{k}: {v:.2f}", highlight=False)
    stdout.print(f"MFU {100 * doc['mfu']:.1f}% of {doc['matmul_peak_gflops']:.0f} GFLOP/s; peak RSS {doc['peak_rss_mib']:.0f} MiB; "
              f"wrote {out_file}", highlight=False)
