"""Evaluation matrices as YAML recipes: ``qsink evaluate --recipe recipes/eval/NAME.yaml``.

A recipe names the models and the axes of the matrix, plus any ``qsink evaluate`` option by its
long name with dashes as underscores (``max_tokens``, ``calib_data`` ...). ``include:`` works as in
training recipes. Options given on the command line win over the recipe. Example::

    models: [smollm2-135m, runs/train/baseline]
    schemes: [w8a8, w8a8-static, w4a4, nvfp4]
    handling: [none, smoothquant, hadamard, token-keep]
    tasks: [qsink_cloze, qsink_sentiment]
    limit: 200
    max_tokens: 8192
"""

from __future__ import annotations

from pathlib import Path

from qsink.config import load_yaml
from qsink.errors import QsinkError

LISTS = ("models", "schemes", "handling", "tasks", "include")
SCALARS = ("data", "ctx", "max_tokens", "batch_size", "calib", "calib_data", "backend", "dtype", "device", "seed",
           "limit", "num_fewshot", "profile_samples", "out", "trust_remote_code")


def load_eval_recipe(path: str | Path) -> dict:
    """The recipe's values, validated by name; list axes accept a list or a comma-separated string."""
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(LISTS) - set(SCALARS))
    if unknown:
        raise QsinkError(f"eval recipe {path}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(LISTS + SCALARS))}")
    out = dict(raw)
    for key in LISTS:
        if key in out:
            value = out[key]
            values = value.split(",") if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise QsinkError(f"eval recipe {path}: {key} must be a list of names")
            out[key] = [v.strip() for v in values if v.strip()]
    if not out.get("models"):
        raise QsinkError(f"eval recipe {path} names no models; add 'models: [...]'")
    return out


def split_names(values) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]``."""
    values = [values] if isinstance(values, str) else list(values or [])
    return [n.strip() for v in values for n in str(v).split(",") if n.strip()]


# the defaults of `qsink evaluate`; a recipe or a sweep's evaluate block overrides them by name
DEFAULTS = dict(schemes=["fp"], handling=["none"], tasks=[], limit=None, num_fewshot=None, data=None, ctx=512,
                max_tokens=12288, batch_size=4, calib=4, calib_data="austen:train", backend="fake", include=[],
                profile_samples=16, dtype="fp32", device="auto", seed=0, trust_remote_code=False)


def check_calib_split(name) -> None:
    """Calibration never reads a test split."""
    if str(name).endswith(":test"):
        raise QsinkError("calibration must not read a test split; pass --calib-data with a train or validation split")


def plan_matrix(opts: dict, force: bool = False):
    """Validated (cells, dropped reasons, tasks, EvalSettings) from evaluate options (DEFAULTS' keys)."""
    from qsink.evaluate.runner import EvalSettings, plan_cells
    from qsink.quant.apply import INCLUDABLE

    o = {**DEFAULTS, **opts}
    if o["backend"] not in ("fake", "bnb"):
        raise QsinkError(f"unknown backend {o['backend']!r}; use fake or bnb")
    if o["batch_size"] < 1 or o["calib"] < 1:
        raise QsinkError("--batch-size and --calib must be at least 1")
    if o["limit"] is not None and o["limit"] < 1:
        raise QsinkError("--limit must be at least 1")
    include = split_names(o["include"])
    bad = [n for n in include if n not in INCLUDABLE]
    if bad:
        raise QsinkError(f"--include takes {', '.join(INCLUDABLE)}, not {', '.join(bad)}")
    if include and o["backend"] != "fake":
        raise QsinkError("--include works with --backend fake only")
    cells, dropped = plan_cells(split_names(o["schemes"]), split_names(o["handling"]), o["backend"])
    tasks = split_names(o["tasks"])
    if tasks:
        from qsink.evaluate.lmeval import check_tasks

        check_tasks(tasks)  # before anything is loaded
    if any(c.scheme != "fp" for c in cells):
        check_calib_split(o["calib_data"])
    settings = EvalSettings(ctx=o["ctx"], max_tokens=o["max_tokens"] or None, batch_size=o["batch_size"],
                            dtype=o["dtype"], device=o["device"], seed=o["seed"], calib=o["calib"],
                            calib_data=o["calib_data"], backend=o["backend"], include=tuple(include),
                            trust_remote_code=o["trust_remote_code"], force=force, tasks=tuple(tasks),
                            limit=o["limit"], num_fewshot=o["num_fewshot"], profile_samples=o["profile_samples"])
    return cells, dropped, tasks, settings
