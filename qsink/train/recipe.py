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

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from qsink.config import load_yaml, merge_dicts
from qsink.errors import QsinkError
from qsink.models.family.config import VARIANTS


@dataclass
class TrainRecipe:
    name: str = "baseline"
    variant: str = "baseline"  # a preset from qsink.models.family.VARIANTS
    model: dict = field(default_factory=dict)  # QsinkConfig overrides on top of the variant
    data: list = field(default_factory=lambda: ["austen:train", "tdavid", "web"])
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
    betas: list = field(default_factory=lambda: [0.9, 0.95])
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
        if self.variant not in VARIANTS:
            raise QsinkError(f"unknown variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        if self.seq_len < 2 or self.batch_size < 1 or self.steps < 1:
            raise QsinkError("seq_len must be >= 2, batch_size and steps >= 1")
        if self.tokenizer not in ("bpe", "word"):
            raise QsinkError(f"unknown tokenizer {self.tokenizer!r}; choose from bpe, word")
        if self.loss_max is not None and self.loss_max < self.loss_min:
            raise QsinkError("loss_max must be >= loss_min")

    def model_config(self) -> dict:
        return {**VARIANTS[self.variant], **self.model}

    def to_dict(self) -> dict:
        return asdict(self)


def load_recipe(path: str | Path, size: str | None = None, overrides: dict | None = None) -> TrainRecipe:
    raw = merge_dicts(load_yaml(path), overrides or {})
    if size:
        sizes = raw.get("sizes", {})
        if size not in sizes:
            raise QsinkError(f"recipe {path} has no size {size!r}; it has {', '.join(sizes) or 'none'}")
        raw = merge_dicts(raw, sizes[size])
    valid = {f.name for f in fields(TrainRecipe)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise QsinkError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    return TrainRecipe(**raw)
