"""Load any checkpoint qsink supports: built-ins, GGUF files and Hugging Face directories."""

from qsink.models.loader import ResolvedModel, check_ctx, check_safetensors, checkpoint_dir, load, pick_device, resolve
from qsink.models.zoo import BUILTINS

__all__ = ["BUILTINS", "ResolvedModel", "check_ctx", "check_safetensors", "checkpoint_dir", "load", "pick_device", "resolve"]
