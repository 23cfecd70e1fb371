"""Training recipes: YAML files that inherit from a base with ``include:`` and change one thing.

Example ``recipes/variants/sandwich.yaml``::

    include: base.yaml
    name: sandwich
    variant: sandwich

Includes resolve relative to the including file and merge depth-first (mappings merge key by key,
everything else is replaced). Unknown keys are errors that list the valid ones. ``sizes`` maps a
size name to overrides (``--size gpu`` for a GPU-scale run of the same recipe).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from qsink.files import load_yaml, merge_dicts
from qsink.errors import QsinkError
from qsink.models.family.config import VARIANTS, QsinkConfig
from qsink.validate import above, at_least, check_types

# QsinkConfig fields the trainer sets itself, so a recipe's ``model:`` may not
_TRAINER_SETS = {"vocab_size": "it comes from the tokenizer (set the recipe's top-level vocab_size)",
                 "max_position_embeddings": "it follows seq_len", "bos_token_id": "it comes from the tokenizer",
                 "eos_token_id": "it comes from the tokenizer", "pad_token_id": "qsink trains without padding"}

# smallest sensible value of each numeric key (None values are not checked)
_AT_LEAST = {"vocab_size": 1, "seq_len": 2, "batch_size": 1, "steps": 1, "min_lr_ratio": 0, "warmup": 0,
             "weight_decay": 0, "loss_min": 0, "eval_every": 1, "eval_batches": 1, "ckpt_every": 1, "threads": 1}
_ABOVE = {"lr": 0, "grad_clip": 0, "max_minutes": 0}


@dataclass
class TrainRecipe:
    name: str = "baseline"
    variant: str = "baseline"  # a preset from qsink.models.family.VARIANTS
    model: dict = field(default_factory=dict)  # QsinkConfig overrides on top of the variant
    data: list[str] = field(default_factory=lambda: ["austen:train", "tdavid", "web"])
    val_data: str = "austen:validation"
    tokenizer: str = "bpe"  # "bpe" (real text) or "word" (one id per word: the synthetic bb language)
    vocab_size: int = 4096  # BPE vocabulary; a word tokenizer's size is the data's word count
    seq_len: int = 256  # tokens per training sequence, BOS included
    batch_size: int = 16
    steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup: int = 50
    weight_decay: float = 0.1
    decay_embeddings: bool = True  # False: the (tied) embedding matrix is exempt from weight decay
    grad_clip: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    loss_min: int = 0  # the loss is taken on target positions in [loss_min, loss_max]
    loss_max: int | None = None
    eval_every: int = 100
    eval_batches: int = 8
    ckpt_every: int = 100
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    max_minutes: float | None = None  # stop (with a checkpoint) once this much wall time has passed
    sizes: dict = field(default_factory=dict)  # size name -> overrides

    def __post_init__(self):
        """Check every key's type (its annotation), range and the model it describes.

        Raises:
            QsinkError: naming the key, its value and what to write instead.
        """
        check_types(self)
        if self.variant not in VARIANTS:
            raise QsinkError(f"unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        if self.tokenizer not in ("bpe", "word"):
            raise QsinkError(f"unknown tokenizer {self.tokenizer!r}; choose from bpe, word")
        self._check_ranges()
        _check_model_keys(self.model)
        QsinkConfig(**self.model_config())  # the sizes build a model (raises QsinkError naming the field)

    def _check_ranges(self) -> None:
        """Refuse values of the right type that are clearly wrong (:data:`_AT_LEAST`, :data:`_ABOVE`, betas, loss window, data)."""
        at_least(**{k: (getattr(self, k), low) for k, low in _AT_LEAST.items()})
        above(**{k: (getattr(self, k), low) for k, low in _ABOVE.items()})
        if self.loss_max is not None and self.loss_max < self.loss_min:
            raise QsinkError("loss_max must be >= loss_min")
        if not self.data:
            raise QsinkError("data is empty; list at least one training corpus, e.g. [austen:train]")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise QsinkError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.95], not {self.betas!r}")

    def model_config(self) -> dict:
        return {**VARIANTS[self.variant], **self.model}

    def to_dict(self) -> dict:
        return asdict(self)


def _check_model_keys(model: dict) -> None:
    """Refuse ``model:`` keys that are not QsinkConfig fields, or that the trainer sets itself."""
    valid = sorted(set(inspect.signature(QsinkConfig.__init__).parameters) - {"self", "kwargs"} - set(_TRAINER_SETS))
    for key in model:
        if key in _TRAINER_SETS:
            raise QsinkError(f"model: {key} cannot be set in a recipe, {_TRAINER_SETS[key]}; remove it from model:")
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise QsinkError(f"model: unknown key {key!r}; {guess}valid keys: {', '.join(valid)}")


def load_recipe(path: str | Path, size: str | None = None, overrides: dict | None = None) -> TrainRecipe:
    """The recipe at ``path`` with its includes, the ``sizes`` entry ``size`` and ``overrides`` merged on top.

    Raises:
        QsinkError: an unknown key, a value of the wrong type or range, or a model that cannot be
            built; the message names the recipe and the key.
    """
    raw = merge_dicts(load_yaml(path), overrides or {})
    if size:
        sizes = raw.get("sizes") or {}
        if not isinstance(sizes, dict) or size not in sizes:
            have = ", ".join(map(str, sizes)) if isinstance(sizes, dict) else "none"
            raise QsinkError(f"recipe {path} has no size {size!r}; it has {have or 'none'}")
        if not isinstance(sizes[size], dict):
            raise QsinkError(f"recipe {path}: sizes: {size} must be a mapping of keys to override, not {sizes[size]!r}")
        raw = merge_dicts(raw, sizes[size])
    valid = {f.name for f in fields(TrainRecipe)}
    unknown = sorted(map(str, set(raw) - valid))
    if unknown:
        raise QsinkError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    try:
        return TrainRecipe(**raw)
    except QsinkError as e:
        raise QsinkError(f"recipe {path}: {e}") from None
