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
