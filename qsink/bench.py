"""Benchmarks: ratios measured side by side in one run, on the same windows (never timed tests).

``qsink bench measure``: the profiler against a plain forward with ``output_hidden_states=True``.
``qsink bench ppl``: fp perplexity against lm-eval's rolling-loglikelihood scorer on the same windows.
Passes alternate (plain, profile, plain, profile, ...) after a warm-up, and each side keeps its
fastest pass, so a background hiccup does not decide the ratio.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from qsink.data import load_corpus
from qsink.data.windows import make_windows, tokens_for
from qsink.evaluate.agreement import DEFAULT_TOPK, Agreement, ReferenceBuilder, reference_identity
from qsink.evaluate.perplexity import perplexity
from qsink.evaluate.plan import Cell
from qsink.evaluate.quantized import calibration_for, quantize_for
from qsink.evaluate.settings import EvalSettings
from qsink.files import atomic_write_text
from qsink.measure.collect import profile
from qsink.measure.options import ProfileSettings
from qsink.models import load
from qsink.models.family import QsinkConfig, QsinkForCausalLM
from qsink.quant import SCHEMES
from qsink.records import env_info
from qsink.train import load_recipe, train


def bench_inputs(model: str, device: str = "auto", log=print):
    """The model, its tokenizer and the held-out Austen text every benchmark runs on."""
    m, tok = load(model, device=device, log=log)
    return m, tok, load_corpus("austen", "test", log=log)


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_measure(model, tok, text, samples: int = 16, ctx: int = 512, repeats: int = 2, batch_size: int = 1, log=print) -> dict:
    windows = make_windows(tok, text, ctx, max_tokens=samples * ctx)
    ids = windows.input_ids[:samples]
    device = next(model.parameters()).device

    @torch.inference_mode()
    def plain():
        for start in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[start : start + batch_size].to(device), output_hidden_states=True, use_cache=False)

    def prof():
        profile(model, tok, windows, ProfileSettings(), batch_size=batch_size)

    def prof_no_attention():  # what the eager-attention sink statistics cost
        profile(model, tok, windows, ProfileSettings(attn_windows=0), batch_size=batch_size)

    with torch.inference_mode():
        model(input_ids=ids[:1].to(device), use_cache=False)  # warm-up
    times = {"plain_forward_hidden_states": [], "measure": [], "measure_without_attention": []}
    for r in range(repeats):
        for name, fn in (("plain_forward_hidden_states", plain), ("measure", prof), ("measure_without_attention", prof_no_attention)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            log(f"  pass {r + 1}/{repeats} {name}: {times[name][-1]:.1f} s")
    best = {k: min(v) for k, v in times.items()}
    return {
        "benchmark": "measure_vs_plain_forward",
        "windows": int(ids.shape[0]), "ctx": ctx, "batch_size": batch_size, "repeats": repeats,
        "seconds": times, "best_s": best,
        "ratio": best["measure"] / best["plain_forward_hidden_states"],
        "ratio_without_attention": best["measure_without_attention"] / best["plain_forward_hidden_states"],
        "target": "<= 1.5",
        "machine": machine(), "env": env_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench_quant(model, tok, text, calib_text, cells=(("w8a8", "none"), ("w4a4", "hadamard")), windows_n: int = 8,
                ctx: int = 512, repeats: int = 2, batch_size: int = 4, kld: bool = False, log=print) -> dict:
    """Perplexity wall time of each quantized cell / fp, on the same windows (preparation excluded).

    Also each side's tokens/s (best pass) and the peak resident memory of loading the model and
    evaluating it in fp (a warm-up pass over one batch, before any quantized copy exists): what a
    user's fp evaluation of this model needs, bounded by the chunked head for large vocabularies.
    ``kld``: also time each quantized cell with its agreement statistics against the fp reference
    (``CELL+kld``), which is built once, timed and sized here.
    """
    windows = make_windows(tok, text, ctx, max_tokens=tokens_for(tok, windows_n, ctx))
    perplexity(model, tok, dataclasses.replace(windows, input_ids=windows.input_ids[:batch_size]), batch_size)  # warm-up
    rss_fp = peak_rss_mib()
    settings = EvalSettings(ctx=ctx)
    calib = calibration_for(tok, settings, calib_text)
    models = {"fp": model}
    for scheme, handling in cells:
        m = copy.deepcopy(model)
        quantize_for(m, tok, Cell(scheme, handling), settings, calib, sqnr=False)
        models[f"{scheme}+{handling}"] = m
    reference, runs = None, [(name, m, False) for name, m in models.items()]
    if kld:
        reference = _bench_reference(model, tok, windows, batch_size, log)
        runs += [(f"{name}+kld", m, True) for name, m in models.items() if name != "fp"]
    times = {name: [] for name, _, _ in runs}
    ppl, kld_mean = {}, {}
    for r in range(repeats):
        for name, m, with_kld in runs:
            observers = [Agreement(windows.n_scored, reference=reference["ref"])] if with_kld else []
            res = perplexity(m, tok, windows, batch_size, observers=observers)
            times[name].append(res.wall_s)
            ppl[name] = res.ppl
            if with_kld:
                kld_mean[name.removesuffix("+kld")] = observers[0].summary()["kld"]["mean"]
            log(f"  pass {r + 1}/{repeats} {name}: {res.wall_s:.1f} s (ppl {res.ppl:.3f})")
    best = {k: min(v) for k, v in times.items()}
    extra = {}
    if kld:
        extra = {"kld_cost": {k: best[f"{k}+kld"] / best[k] for k in models if k != "fp"}, "kld_mean": kld_mean,
                 "kld_reference": {k: v for k, v in reference.items() if k != "ref"}, "kld_cost_target": "<= 1.1"}
    return extra | {
        "benchmark": "quantized_eval_vs_fp", "windows": windows.n_windows, "ctx": ctx, "batch_size": batch_size,
        "repeats": repeats, "seconds": times, "best_s": best, "ppl": ppl,
        "tokens_per_s": {k: windows.n_windows * windows.ctx / v for k, v in best.items()},
        "ratio": {k: best[k] / best["fp"] for k in best if k != "fp" and not k.endswith("+kld")},
        "peak_rss_mib_fp_eval": rss_fp, "peak_rss_mib_all_copies": peak_rss_mib(),
        "target": "<= 1.3 for the integer schemes (w8a8*, w4a16, w4a8, w4a4); <= 1.6 for w4a4+hadamard",
        "machine": machine(), "env": env_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def bench_dtype(model, tok, text, calib_text, cells=(("fp", "none"), ("w8a8", "none"), ("w4a16", "none")),
                dtype: str = "bf16", windows_n: int = 8, ctx: int = 512, batch_size: int = 4, log=print) -> dict:
    """What computing in ``dtype`` instead of fp32 does to each cell: the same cell in fp32 and in ``dtype`` on the
    same windows, each with its perplexity and its KL divergence against the fp32 fp model (top-K reference), and
    the wall time of each evaluation (``qsink bench dtype``)."""
    from qsink.validate import DTYPES

    windows = make_windows(tok, text, ctx, max_tokens=tokens_for(tok, windows_n, ctx))
    reference = _bench_reference(model, tok, windows, batch_size, log)["ref"]
    low = copy.deepcopy(model).to(getattr(torch, DTYPES[dtype]))
    rows = []
    for scheme, handling in cells:
        row = {"cell": scheme if handling == "none" else f"{scheme}+{handling}"}
        for name, base in (("fp32", model), (dtype, low)):
            settings = EvalSettings(ctx=ctx, dtype=name if name != "fp32" else "fp32")
            m = base if scheme == "fp" else copy.deepcopy(base)
            quantize_for(m, tok, Cell(scheme, handling), settings, calibration_for(tok, settings, calib_text), sqnr=False)
            agree = Agreement(windows.n_scored, reference=reference)
            res = perplexity(m, tok, windows, batch_size, observers=[agree])
            summary = agree.summary()
            row[name] = {"ppl": res.ppl, "kld_vs_fp32_fp": summary["kld"]["mean"], "same_top_vs_fp32_fp": summary["same_top"]["p"],
                         "wall_s": res.wall_s}
            log(f"  {row['cell']} in {name}: ppl {res.ppl:.4f}, KLD vs the fp32 fp model {summary['kld']['mean']:.5f}, "
                f"{res.wall_s:.1f} s")
        row["ppl_drift_pct"] = 100 * (row[dtype]["ppl"] / row["fp32"]["ppl"] - 1)
        row["wall_ratio"] = row[dtype]["wall_s"] / row["fp32"]["wall_s"]
        rows.append(row)
    return {"benchmark": "dtype_drift", "dtype": dtype, "windows": windows.n_windows, "ctx": ctx, "batch_size": batch_size,
            "cells": rows, "machine": machine(), "env": env_info(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _bench_reference(model, tok, windows, batch_size: int, log) -> dict:
    """The fp reference of the KL divergence, built by an fp pass as ``qsink evaluate``'s fp cell does;
    its size on disk and what building it added to that pass."""
    builder = ReferenceBuilder(model, tok, windows, DEFAULT_TOPK, reference_identity("bench", windows, DEFAULT_TOPK, "fp32"))
    res = perplexity(model, tok, windows, batch_size, observers=[builder])
    ref = builder.reference()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        size = ref.save(Path(d) / "ref.npz").stat().st_size
        write_s = time.perf_counter() - t0
    full = windows.n_scored * model.get_output_embeddings().weight.shape[0] * 4
    log(f"  fp reference: {size / 2**20:.1f} MiB (full fp32 logits: {full / 2**20:.0f} MiB), {ref.build_s:.1f} s of a "
        f"{res.wall_s:.1f} s fp pass, written in {write_s:.2f} s")
    return {"ref": ref, "topk": DEFAULT_TOPK, "positions": ref.n, "bytes": size, "full_logits_bytes": full,
            "build_s": ref.build_s, "fp_pass_with_reference_s": res.wall_s, "write_s": write_s}


def bench_ppl(model, tok, text, windows_n: int = 8, ctx: int = 512, repeats: int = 2, batch_size: int = 4, log=print) -> dict:
    """qsink's fp perplexity against lm-eval's rolling-loglikelihood scoring on the same windows.

    lm-eval's ``HFLM.loglikelihood_rolling`` cuts a document into windows and scores them with
    ``HFLM._loglikelihood_tokens``; here that scorer gets qsink's own windows as its
    (context, continuation) pairs (context = the window's first token, continuation = the rest),
    so both sides score exactly the same tokens with exactly the same context. Agreement is the
    token-level perplexity from lm-eval's per-window log-likelihoods; speed is each side's best
    pass. For reference, lm-eval's full ``loglikelihood_rolling`` on the same tokens as one
    document (its own windows: ``ctx`` tokens each, the first conditioned on its prefix token) is
    timed too.
    """
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM


    windows = make_windows(tok, text, ctx, max_tokens=tokens_for(tok, windows_n, ctx))
    ids = windows.input_ids.tolist()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=ctx)
    requests = [(None, w[:1], w[1:]) for w in ids]
    perplexity(model, tok, make_windows(tok, text, ctx, max_tokens=ctx), batch_size)  # warm-up
    times = {"qsink": [], "lm_eval_same_windows": [], "lm_eval_rolling": []}
    doc = tok.decode(sum((w[1:] if windows.bos else w for w in ids), []))

    def run_qsink():
        nonlocal res
        res = perplexity(model, tok, windows, batch_size)
        return res.wall_s

    def run_same():
        nonlocal lls
        t0 = time.perf_counter()
        lls = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        return time.perf_counter() - t0

    def run_rolling():
        nonlocal rolling
        t0 = time.perf_counter()
        rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (doc,), 0)], disable_tqdm=True)
        return time.perf_counter() - t0

    res = lls = rolling = None
    order = [("qsink", run_qsink), ("lm_eval_same_windows", run_same), ("lm_eval_rolling", run_rolling)]
    for r in range(repeats):
        for name, fn in order if r % 2 == 0 else order[::-1]:  # ABC CBA ...: no side always goes first
            times[name].append(fn())
        log(f"  pass {r + 1}/{repeats}: qsink {times['qsink'][-1]:.1f} s, lm-eval same windows "
            f"{times['lm_eval_same_windows'][-1]:.1f} s, lm-eval rolling {times['lm_eval_rolling'][-1]:.1f} s")
    n = windows.n_scored
    ppl_lm = math.exp(-sum(ll for ll, _ in lls) / n)
    n_rolling = len(lm.tok_encode(doc))
    best = {k: min(v) for k, v in times.items()}
    return {
        "benchmark": "fp_perplexity_vs_lm_eval", "windows": windows.n_windows, "ctx": ctx, "batch_size": batch_size,
        "repeats": repeats, "seconds": times, "best_s": best, "scored_tokens": n,
        "ppl_qsink": res.ppl, "ppl_lm_eval_same_windows": ppl_lm, "ppl_rel_diff": abs(ppl_lm - res.ppl) / res.ppl,
        "ppl_lm_eval_rolling_own_windows": math.exp(-rolling[0] / n_rolling), "rolling_scored_tokens": n_rolling,
        "speed_ratio_same_windows": best["lm_eval_same_windows"] / best["qsink"],
        "speed_ratio_rolling_per_token": (best["lm_eval_rolling"] / n_rolling) / (best["qsink"] / n),
        "target": "speed ratios >= 1 (qsink at least as fast); ppl_rel_diff small",
        "machine": machine(), "env": env_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul throughput on large square matrices (the MFU denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bench_train(recipe, steps: int = 20, log=print) -> dict:
    """qsink's training step vs a minimal plain PyTorch loop on the same model, batch and data."""

    r = recipe

    def plain_loop() -> tuple[float, QsinkForCausalLM]:
        torch.manual_seed(r.seed)
        cfg = QsinkConfig(vocab_size=r.vocab_size, max_position_embeddings=max(r.seq_len, 64), **r.model_config())
        model = QsinkForCausalLM(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=r.lr, foreach=False)
        x = torch.randint(0, r.vocab_size, (r.batch_size, r.seq_len))
        model(input_ids=x, labels=x).loss.backward()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * x.numel() / (time.perf_counter() - t0), model

    plain_before, _ = plain_loop()  # the plain loop runs before and after qsink's; the faster one counts
    stamps: list[float] = []  # when each of qsink's steps ended
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(type(r)(**{**r.to_dict(), "steps": steps + 1, "eval_every": 10**9, "ckpt_every": 10**9}), tmp, log=log,
              on_step=lambda step, loss, tps: stamps.append(time.perf_counter()))
        qsink_wall = time.perf_counter() - t0
    # steady state on both sides: the first step is the warm-up (the plain loop runs one untimed too), and
    # qsink's final validation pass and checkpoint write come after the last step, outside the window
    qsink_tps = steps * r.batch_size * r.seq_len / (stamps[-1] - stamps[0])
    plain_after, model = plain_loop()
    plain_tps = max(plain_before, plain_after)
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_params  # forward + backward, attention's T^2 term left out
    peak = matmul_peak_gflops()
    return {
        "benchmark": "train_tokens_per_s", "recipe": r.name, "steps": steps, "batch_size": r.batch_size, "seq_len": r.seq_len,
        "n_params": n_params, "qsink_tokens_per_s": qsink_tps, "plain_loop_tokens_per_s": plain_tps,
        "plain_loop_before_after_tokens_per_s": [plain_before, plain_after],
        "ratio": qsink_tps / plain_tps, "target": ">= 0.9", "qsink_wall_s_incl_setup": qsink_wall,
        "matmul_peak_gflops": peak, "mfu": qsink_tps * flops_per_token / (peak * 1e9),
        "machine": machine(), "env": env_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _reset_peak_rss() -> bool:
    """Start the process's peak resident memory (VmHWM) afresh, where Linux allows it (``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_spinquant(model, tok, calib_text, scheme: str = "w4a4", steps: int = 100, calib: int = 4, ctx: int = 512,
                    log=print) -> dict:
    """``qsink bench spinquant``: SpinQuant's rotation training with its default settings on one model, as an
    evaluation cell runs it: wall time, seconds per step, and the peak memory of the training (resident memory on
    the CPU, allocated memory on a GPU), with the loss at the Hadamard start and after training."""
    from qsink.quant import get_scheme, quantize_
    from qsink.quant.calibration import calibration_windows

    windows = calibration_windows(tok, calib_text, calib, ctx, 0)
    q = copy.deepcopy(model)
    device = next(q.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    report = quantize_(q, get_scheme(scheme), "spinquant", windows, tok, options={"steps": steps}, sqnr=False)
    wall = time.perf_counter() - t0
    h = report["handling"]
    return {"bench": "spinquant", "scheme": scheme, "steps": steps, "calibration_windows": windows.n_windows, "ctx": ctx,
            "tokens_per_step": h["tokens_per_step"], "train_s": h["train_s"], "s_per_step": h["train_s"] / max(steps, 1),
            "quantize_s": wall, "loss_at_hadamard": h["loss_at_hadamard"], "loss_learned": h["loss_learned"],
            "loss_curve": h["loss_curve"], "max_orthogonality_error": h["max_orthogonality_error"],
            "peak_rss_during_mib": _vm_hwm_mib() if reset else None,
            "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "n_params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "machine": machine(), "env": env_info()}


MATRIX_SCHEMES = ("w8a8", "w8a8-static", "w4a16", "w4a8", "w4a4", "mxfp4", "nvfp4", "nf4")
MATRIX_HANDLING = ("none", "smoothquant", "hadamard", "token-keep")


def bench_matrix(model: str, schemes=MATRIX_SCHEMES, handling=MATRIX_HANDLING, max_tokens: int = 4096,
                 settings: EvalSettings | None = None, log=print, progress_factory=None) -> dict:
    """``qsink bench matrix``: the evaluation matrix of one model as ``qsink evaluate`` runs it (fresh records in a
    temporary directory, so every cell runs), and, in the same run, a plain forward of each cell's model over the
    same windows. The floor is the sum of those forwards; the matrix wall time excludes them. Per cell: copy,
    handling, weight encoding, calibration, SQNR, evaluation and writing, from the records."""
    from qsink.data.resolve import resolve_data
    from qsink.evaluate.plan import plan_cells
    from qsink.evaluate.runner import run_cells
    from qsink.models import resolve
    from qsink.quant.calibration import run_windows
    from qsink.records import RecordStore

    settings = settings or EvalSettings(max_tokens=max_tokens)
    cells, dropped = plan_cells(list(schemes), list(handling), settings.backend)
    for reason in dropped:
        log(f"skipping {reason}")
    res = resolve(model)
    text = resolve_data("austen:test", None, log=log)
    calib_text = resolve_data(settings.calib_data, None, log=log)
    floor: dict[str, float] = {}
    inside = [0.0]  # time spent in the callbacks: part of the run, not of the matrix

    calib_forward = [0.0]

    @torch.inference_mode()
    def plain_forward(cell, m, windows, calib):
        t_in = time.perf_counter()
        device = next(m.parameters()).device
        m(input_ids=windows.input_ids[:1].to(device), use_cache=False)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        run_windows(m, windows, settings.batch_size)
        floor[cell.label] = time.perf_counter() - t0
        if cell.scheme == "fp" and calib is not None:  # the floor's one calibration forward per model
            t0 = time.perf_counter()
            run_windows(m, calib, settings.batch_size)
            calib_forward[0] = time.perf_counter() - t0
        inside[0] += time.perf_counter() - t_in

    with tempfile.TemporaryDirectory(prefix="qsink-bench-matrix-") as tmp:
        t0 = time.perf_counter()
        outcomes = run_cells([res], cells, text, settings, RecordStore(tmp), calib_text=calib_text, log=log,
                             progress_factory=progress_factory, on_model=plain_forward,
                             calib_cache=Path(tmp) / "calibration")  # cold: the statistics are computed and written
        total = time.perf_counter() - t0
        from qsink.measure.document import PROFILE_SCHEMA

        profiles = RecordStore(tmp).load_all(schema=PROFILE_SCHEMA, required=("key",))
    profile_s = sum(float(d.get("timing", {}).get("wall_s", 0.0)) for d in profiles)
    floor_total = sum(floor.values()) + calib_forward[0]
    matrix_s = total - inside[0]
    rows = []
    for o in outcomes:
        r = o.record
        q = r["config"].get("quant") or {}
        qt = q.get("timing", {})
        rows.append({"cell": o.cell.label, "status": r["status"], "copy_s": r["timing"].get("copy_s", 0.0),
                     "handling_s": qt.get("handling_s", 0.0), "rewrite_s": qt.get("rewrite_s", 0.0),
                     "rewrite": qt.get("rewrite", "none"), "encode_s": qt.get("encode_s", 0.0),
                     "calibration_s": qt.get("calibration_s", 0.0), "calibration": qt.get("calibration", "none"),
                     "sqnr_s": qt.get("sqnr_s", 0.0), "evaluation_s": r["timing"].get("wall_s", 0.0),
                     "write_s": o.write_s, "plain_forward_s": floor.get(o.cell.label)})
    return {"bench": "matrix", "model": res.name, "schemes": list(schemes), "handling": list(handling),
            "cells": len(outcomes), "dropped": dropped, "settings": settings.to_dict(),
            "matrix_s": matrix_s, "floor_s": floor_total, "floor_calibration_forward_s": calib_forward[0],
            "floor_definition": "a plain forward of each cell's model over its evaluation windows, plus one forward of "
                                "the fp model over the calibration windows", "ratio": matrix_s / floor_total if floor_total else None,
            "unaccounted_s": matrix_s - sum(sum(v for k, v in row.items() if k.endswith("_s") and k != "plain_forward_s"
                                                and isinstance(v, float)) for row in rows),
            "per_cell": rows, "profile_s": profile_s, "machine": machine(), "env": env_info()}


def bench_advise(model: str, budgets=(0.01, 0.05), families=("int", "gguf"), max_tokens: int = 4096,
                 settings: EvalSettings | None = None, matrix_schemes=MATRIX_SCHEMES, matrix_handling=MATRIX_HANDLING,
                 log=print, progress_factory=None) -> dict:
    """``qsink bench advise``: ``qsink advise`` at ``budgets`` from a cold start (no kept measurements, no records),
    and, in the same run, the evaluation matrix of ``qsink bench matrix``: the advisor's wall time in units of one
    full matrix of the same model (target: a few)."""
    from qsink.data.resolve import resolve_data
    from qsink.evaluate.advise import advise
    from qsink.records import RecordStore

    settings = settings or EvalSettings(max_tokens=max_tokens, profile_samples=0)
    text = resolve_data("austen:test", None, log=log)
    calib_text = resolve_data(settings.calib_data, None, log=log)
    runs = []
    with tempfile.TemporaryDirectory(prefix="qsink-bench-advise-") as tmp:
        t0 = time.perf_counter()
        for b in budgets:
            a = advise(model, b, text, calib_text, settings, RecordStore(tmp), families=list(families), log=log,
                       progress_factory=progress_factory)
            runs.append({"budget": b, "bits_per_weight": a.chosen.bits, "predicted_kld": a.chosen.predicted,
                         "verified_kld": a.record["advice"]["verified_kld"], "rounds": a.rounds, **a.timing})
        advise_s = time.perf_counter() - t0
    matrix = bench_matrix(model, matrix_schemes, matrix_handling, settings=EvalSettings(calib=settings.calib, max_tokens=settings.max_tokens, ctx=settings.ctx,
                                                       batch_size=settings.batch_size, dtype=settings.dtype,
                                                       device=settings.device), log=log, progress_factory=progress_factory)
    return {"bench": "advise", "model": model, "budgets": list(budgets), "families": list(families),
            "settings": settings.to_dict(), "advise_s": advise_s, "matrix_s": matrix["matrix_s"],
            "matrix_cells": matrix["cells"], "ratio": advise_s / matrix["matrix_s"], "runs": runs,
            "definition": "advise at every budget, cold (measurements and records computed), against the evaluation "
                          "matrix of 'qsink bench matrix' with the same windows, timed in the same run",
            "machine": machine(), "env": env_info()}


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def write_json(doc: dict, path: Path) -> Path:
    """Write a benchmark document, stamped with the process's peak resident memory."""
    doc.setdefault("peak_rss_mib", peak_rss_mib())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(doc, indent=2))


def bench_all(model: str, recipe: Path, windows: int = 8, ctx: int = 512, repeats: int = 2, train_steps: int = 20,
              device: str = "auto", log=print) -> dict:
    """Every ratio in one process on the same windows: each scheme / fp, measure / forward, lm-eval /
    qsink, training / plain loop, MFU and peak RSS (``qsink bench all``)."""
    m, tok, text = bench_inputs(model, device, log)
    cells = tuple((name, "none") for name in SCHEMES.names() if name != "fp")
    parts = {"quant": bench_quant(m, tok, text, load_corpus("austen", "train", log=log), cells=cells, windows_n=windows,
                                  ctx=ctx, repeats=repeats, log=log),
             "measure": bench_measure(m, tok, text, samples=windows, ctx=ctx, repeats=repeats, log=log),
             "ppl": bench_ppl(m, tok, text, windows_n=windows, ctx=ctx, repeats=repeats, log=log)}
    rss_eval = peak_rss_mib()
    del m
    parts["train"] = bench_train(load_recipe(recipe), steps=train_steps, log=log)
    return {"model": model, "recipe": str(recipe), "windows": windows, "ctx": ctx, "repeats": repeats,
            "ratios": {**{f"{k} / fp": v for k, v in parts["quant"]["ratio"].items()},
                       "measure / plain forward": parts["measure"]["ratio"],
                       "lm-eval same windows / qsink": parts["ppl"]["speed_ratio_same_windows"],
                       "lm-eval rolling per token / qsink": parts["ppl"]["speed_ratio_rolling_per_token"],
                       "qsink train / plain loop (tokens/s)": parts["train"]["ratio"]},
            "mfu": parts["train"]["mfu"], "matmul_peak_gflops": parts["train"]["matmul_peak_gflops"],
            "peak_rss_mib_after_eval": rss_eval, "peak_rss_mib": peak_rss_mib(), "machine": machine(), "parts": parts}
