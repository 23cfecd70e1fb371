"""Load any checkpoint qsink supports: built-ins, GGUF files and Hugging Face directories."""

from qsink.models import family as _family  # noqa: F401  (registers model_type "qsink" with transformers)
from qsink.models.loader import check_ctx, checkpoint_dir, load, pick_device
from qsink.models.resolve import ResolvedModel, check_safetensors, resolve
from qsink.models.zoo import BUILTINS

__all__ = ["BUILTINS", "ResolvedModel", "check_ctx", "check_safetensors", "checkpoint_dir", "load", "pick_device", "resolve"]
