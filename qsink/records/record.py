"""The result record: one JSON document per evaluation cell, the seam between stages.

Schema ``qsink.record/1``::

    {
      "schema": "qsink.record/1",
      "key": "<sha256 of the identity below>",
      "status": "ok" | "failed",
      "error": null | "<why it failed>",
      "identity": {model_sha256, scheme, data_sha256, ctx, max_tokens, dtype, seed},
      "config": {"model": {...}, "scheme": {...}, "data": {...windowing...}, "eval": {...}},
      "metrics": {"ppl", "nll", "bpb", "n_scored", "n_bytes", "delta_ppl", "sqnr_db_mean", ...,
                  "kld_mean", "same_top", "dp_rms", ..., "agreement": {...},        # quantized cells
                  "tasks": {TASK: {"acc", "acc_stderr", "n", "delta_acc", ...}}},   # with --task
      "profile": {"spike_magnitude", "top1_median_max", "kurtosis_max", "sink_ratio", ..., "key"},
      "timing": {"wall_s", "tokens_per_s", "prepare_s", "tasks_s"},
      "env": {"qsink", "python", "torch", "transformers", "platform", "git_commit", "git_dirty"},
      "created": "<UTC ISO time>"
    }

A record is never edited by hand: the leaderboard derives every column from it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

SCHEMA = "qsink.record/1"
# the model's profile summary a record carries under "profile" (absent when profile_samples is 0)
PROFILE_FIELDS = ("spike_magnitude", "spike_layer", "top1_median_max", "kurtosis_max", "has_massive", "sink_ratio",
                  "alpha_mean", "step_up_layer", "step_down_layer", "linear_input_ratio_max")


def cell_key(identity: dict) -> str:
    """Stable hash of what determines a cell's result."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=1)
def env_info() -> dict:
    import importlib.metadata as md

    import qsink

    info = {"qsink": qsink.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    info.update(git_state())
    return info


def git_state() -> dict:
    """Commit and dirtiness of the checkout qsink runs from (``None`` outside a git checkout)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}


def make_record(identity: dict, config: dict, metrics: dict | None, timing: dict | None,
                status: str = "ok", error: str | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "key": cell_key(identity),
        "status": status,
        "error": error,
        "identity": identity,
        "config": config,
        "metrics": metrics or {},
        "timing": timing or {},
        "env": env_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
