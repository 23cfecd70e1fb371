"""Benchmarks: ratios measured side by side in one run, on the same windows (never timed tests).

``qsink bench measure``: the profiler against a plain forward with ``output_hidden_states=True``.
Passes alternate (plain, profile, plain, profile, ...) after a warm-up, and each side keeps its
fastest pass, so a background hiccup does not decide the ratio.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from qsink.data.windows import make_windows
from qsink.measure.profiler import ProfileSettings, profile
from qsink.results.record import env_info


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


def write_json(doc: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path
