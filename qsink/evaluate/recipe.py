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
from qsink.evaluate.runner import plan_cells
from qsink.evaluate.settings import EvalSettings

LISTS = ("models", "schemes", "handling", "tasks", "include")
SCALARS = ("data", "ctx", "max_tokens", "batch_size", "calib", "calib_data", "backend", "dtype", "device", "seed",
           "limit", "num_fewshot", "profile_samples", "out")
REMOTE_CODE = ("eval recipe {path}: trust_remote_code cannot be set in a file (a recipe must not turn on code execution "
               "behind the user's back); remove the key and pass --trust-remote-code on the command line if you trust the model")


def check_recipe_keys(raw: dict, where: str) -> None:
    """Refuse unknown keys, and ``trust_remote_code``, which only the command line may turn on."""
    if "trust_remote_code" in raw:
        raise QsinkError(REMOTE_CODE.format(path=where))
    unknown = sorted(set(raw) - set(LISTS) - set(SCALARS))
    if unknown:
        raise QsinkError(f"eval recipe {where}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(LISTS + SCALARS))}")


def load_eval_recipe(path: str | Path) -> dict:
    """The recipe's values, validated by name; list axes accept a list or a comma-separated string."""
    raw = load_yaml(path)
    check_recipe_keys(raw, str(path))
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


def plan_matrix(opts: dict, force: bool = False):
    """Validated (cells, dropped reasons, tasks, EvalSettings) from evaluate options (EvalSettings' fields
    plus the matrix axes ``schemes`` and ``handling``)."""
    settings = EvalSettings.from_options(opts, include=split_names(opts.get("include")),
                                         tasks=split_names(opts.get("tasks")), force=force)
    cells, dropped = plan_cells(split_names(opts.get("schemes") or ["fp"]), split_names(opts.get("handling") or ["none"]),
                                settings.backend)
    if settings.tasks:
        from qsink.evaluate.lmeval import check_tasks

        check_tasks(list(settings.tasks))  # before anything is loaded
    return cells, dropped, list(settings.tasks), settings
