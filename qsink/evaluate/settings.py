"""The settings of an evaluation cell: their defaults and their validation, in one place.

``qsink evaluate``, its YAML recipes, a sweep's ``evaluate:`` blocks, ``qsink ablate`` and the
lm-eval model type all build an :class:`EvalSettings`; a bad value (``--max-tokens -1``,
``ctx: abc`` in a recipe, a test split for calibration) is refused when it is built, before any
model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from qsink.errors import QsinkError
from qsink.validate import INCLUDABLE, at_least, check_device, check_dtype, check_types

BACKENDS = ("fake", "bnb")  # qsink's fake-quantized QLinear, or bitsandbytes kernels


def check_calib_split(name) -> None:
    """Calibration never reads a test split."""
    if str(name).endswith(":test"):
        raise QsinkError("calibration must not read a test split; pass --calib-data with a train or validation split")


@dataclass(frozen=True)
class EvalSettings:
    ctx: int = 512  # tokens per window
    max_tokens: int | None = 12288  # text tokens used (0 or None: all); keeps a 135M run near a minute on 2 CPU cores
    batch_size: int = 4  # windows per forward
    dtype: str = "fp32"
    device: str = "auto"
    seed: int = 0
    calib: int = 4  # calibration windows (from calib_data, never the test split)
    calib_data: str = "austen:train"
    backend: str = "fake"  # "fake" (qsink's QLinear) or "bnb" (bitsandbytes kernels)
    include: tuple[str, ...] = ()  # also quantize "lm_head" and/or "embed" (default: both stay fp)
    trust_remote_code: bool = False  # only ever from the command line's --trust-remote-code
    force: bool = False  # recompute cells whose record exists
    tasks: tuple[str, ...] = ()  # lm-eval tasks scored on every cell (qsink_cloze, qsink_sentiment, ...)
    limit: int | None = None  # items per task (None: all)
    num_fewshot: int | None = None
    profile_samples: int = 16  # windows of the eval text for the model's profile (0: no profile)
    kld_topk: int = 32  # agreement with fp: P's top-K tokens + a rest bucket from a stored reference (0: exact, live)
    sqnr: bool = False  # per-linear SQNR of each quantized cell: one more pass over the calibration windows
    handling_options: tuple[str, ...] = ()  # "HANDLING.OPTION=VALUE" (spinquant.steps=50), in the key of its cells

    def __post_init__(self):
        check_types(self, flags=True)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "handling_options", tuple(self.handling_options))
        parse_handling_options(self.handling_options)
        if self.max_tokens == 0:
            object.__setattr__(self, "max_tokens", None)
        at_least(flags=True, ctx=(self.ctx, 2), max_tokens=(self.max_tokens, 0), batch_size=(self.batch_size, 1),
                 calib=(self.calib, 1), seed=(self.seed, 0), limit=(self.limit, 1), num_fewshot=(self.num_fewshot, 0),
                 profile_samples=(self.profile_samples, 0), kld_topk=(self.kld_topk, 0))
        check_dtype(self.dtype)
        check_device(self.device)
        if self.backend not in BACKENDS:
            raise QsinkError(f"unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}")
        bad = [n for n in self.include if n not in INCLUDABLE]
        if bad:
            raise QsinkError(f"--include takes {', '.join(INCLUDABLE)}, not {', '.join(bad)}")
        if self.include and self.backend != "fake":
            raise QsinkError("--include works with --backend fake only")
        check_calib_split(self.calib_data)

    @classmethod
    def from_options(cls, opts: dict, **extra) -> "EvalSettings":
        """Settings from a mapping that may hold other keys too (a recipe, a sweep block)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**opts, **extra}.items() if k in names})

    def to_dict(self) -> dict:
        """Plain data (lists, not tuples) for records and job payloads."""
        return asdict(self) | {"include": list(self.include), "tasks": list(self.tasks),
                               "handling_options": list(self.handling_options)}

    def options_for(self, handling: str) -> dict:
        """The options ``--handling-option`` gives ``handling`` (empty for the others)."""
        return parse_handling_options(self.handling_options).get(handling, {})


def parse_handling_options(items) -> dict[str, dict]:
    """``["spinquant.steps=50", "spinquant.lr=1"]`` -> ``{"spinquant": {"steps": 50, "lr": 1}}`` (values read as YAML
    scalars); the handling and its options are checked when the matrix is planned."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        name, dot, rest = str(item).partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and name and key.isidentifier()):
            raise QsinkError(f"--handling-option takes HANDLING.OPTION=VALUE (e.g. spinquant.steps=50), not {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if not isinstance(parsed, (int, float, str, bool)):
            raise QsinkError(f"--handling-option {item!r}: the value must be a number, word or true/false")
        out.setdefault(name, {})[key] = parsed
    return out
