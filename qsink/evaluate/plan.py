"""Planning an evaluation: the matrix of cells (models x schemes x outlier handling) and its settings,
from command-line options, a YAML recipe (``qsink evaluate --recipe recipes/eval/NAME.yaml``) or a
sweep's ``evaluate:`` block.

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

from dataclasses import dataclass, fields
from pathlib import Path

from qsink.errors import QsinkError
from qsink.evaluate.lmeval import check_tasks
from qsink.evaluate.settings import EvalSettings
from qsink.files import load_yaml
from qsink.validate import split_names

LISTS = ("models", "schemes", "handling", "tasks", "include", "handling_options")  # matrix axes and other lists
NOT_IN_FILES = ("force", "trust_remote_code")  # command-line only
SCALARS = ("data", "out") + tuple(f.name for f in fields(EvalSettings) if f.name not in LISTS + NOT_IN_FILES)
MAPS = ("mixtures",)  # name -> mixture spec (qsink.quant.mixture): schemes a recipe defines, e.g. what qsink advise wrote
REMOTE_CODE = ("eval recipe {path}: trust_remote_code cannot be set in a file (a recipe must not turn on code execution "
               "behind the user's back); remove the key and pass --trust-remote-code on the command line if you trust the model")


def check_recipe_keys(raw: dict, where: str) -> None:
    """Refuse unknown keys, and ``trust_remote_code``, which only the command line may turn on."""
    if "trust_remote_code" in raw:
        raise QsinkError(REMOTE_CODE.format(path=where))
    unknown = sorted(set(raw) - set(LISTS) - set(SCALARS) - set(MAPS))
    if unknown:
        raise QsinkError(f"eval recipe {where}: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(LISTS + SCALARS + MAPS))}")


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


@dataclass(frozen=True)
class Cell:
    scheme: str
    handling: str = "none"

    @property
    def label(self) -> str:
        return self.scheme if self.handling == "none" else f"{self.scheme}+{self.handling}"


def parse_cells(labels, allow_fp: bool = False) -> tuple[tuple[str, str], ...]:
    """``["w8a8,w4a4+hadamard"]`` -> ``(("w8a8", "none"), ("w4a4", "hadamard"))``, each pair checked
    (known scheme and handling, a compatible combination) before anything loads. ``fp`` is refused unless
    ``allow_fp`` (a benchmark that compares each cell with itself rather than with fp)."""
    pairs = []
    for label in split_names(labels):
        scheme, _, handling = label.partition("+")
        handling = handling or "none"
        if scheme == "fp" and allow_fp and handling == "none":
            pairs.append(("fp", "none"))
            continue
        if scheme == "fp":
            raise QsinkError(f"cell {label!r}: fp is the reference every cell is timed against; name quantized cells only")
        plan_cells([scheme], [handling])
        pairs.append((scheme, handling))
    if not pairs:
        raise QsinkError("no cells given; name at least one, e.g. --cells w8a8,w4a4+hadamard")
    return tuple(pairs)


def plan_cells(schemes: list[str], handlings: list[str], backend: str = "fake", options=None) -> tuple[list[Cell], list[str]]:
    """The cross product with fp once and incompatible pairs dropped, and why each was dropped.

    A single requested pair that is incompatible is an error (nothing else would run), as are bad
    ``options(handling)`` (the handler's own options)."""
    from qsink.quant import check_combination, get_scheme  # torch: imported when a plan is made, not to read a recipe
    from qsink.quant.apply import make_handler
    from qsink.quant.backends.bnb import check as check_bnb

    options = options or (lambda h: {})
    for s in schemes:
        get_scheme(s)
    for h in handlings:
        make_handler(h, options(h))
    cells, dropped = [Cell("fp")], []
    for s in schemes:
        for h in handlings:
            if s == "fp" or Cell(s, h) in cells:
                continue
            try:
                check_combination(get_scheme(s), h, options(h))
                if backend == "bnb":
                    check_bnb(s, h)
            except QsinkError as e:
                if len(schemes) * len(handlings) == 1:
                    raise
                dropped.append(f"{s}+{h}: {e}")
                continue
            cells.append(Cell(s, h))
    return cells, dropped


def with_recipe(recipe: dict, options: dict, given: set[str]) -> dict:
    """The recipe's values under the command line's: an option in ``given`` (typed on the command line)
    wins, every other option takes the recipe's value where it has one."""
    merged = dict(options)
    for key, value in recipe.items():
        if key not in given:
            merged[key] = Path(value) if key == "out" else value
    return merged


def plan_matrix(opts: dict, force: bool = False):
    """Validated (cells, dropped reasons, tasks, EvalSettings) from evaluate options (EvalSettings' fields
    plus the matrix axes ``schemes`` and ``handling``, and the ``mixtures`` a recipe defines)."""
    from qsink.quant.mixture import register_mixtures

    register_mixtures(opts.get("mixtures"))
    settings = EvalSettings.from_options(opts, include=split_names(opts.get("include")),
                                         tasks=split_names(opts.get("tasks")), force=force,
                                         handling_options=tuple(opts.get("handling_options") or ()))
    cells, dropped = plan_cells(split_names(opts.get("schemes") or ["fp"]), split_names(opts.get("handling") or ["none"]),
                                settings.backend, options=lambda h: settings.options_for(h))
    from qsink.evaluate.settings import parse_handling_options

    unused = set(parse_handling_options(settings.handling_options)) - {c.handling for c in cells}
    if unused:
        raise QsinkError(f"--handling-option names {', '.join(sorted(unused))}, which no cell of this matrix uses")
    if settings.tasks:
        check_tasks(list(settings.tasks))  # before anything is loaded
    return cells, dropped, list(settings.tasks), settings
