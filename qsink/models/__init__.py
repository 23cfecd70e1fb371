"""Load any checkpoint qsink supports: built-ins, GGUF files, Hugging Face directories and hub ids.

Resolving a model (:func:`resolve`) needs neither torch nor transformers, so a model that cannot be
had is told in a fraction of a second. The loader's names are imported on first use: it brings the
heavy libraries and registers qsink's own family (model_type "qsink") with transformers.
"""

from importlib import import_module

from qsink.models.resolve import ResolvedModel, check_safetensors, resolve
from qsink.models.zoo import BUILTINS

_LOADER = ("check_ctx", "checkpoint_dir", "load", "pick_device")

__all__ = ["BUILTINS", "ResolvedModel", "check_ctx", "check_safetensors", "checkpoint_dir", "load", "pick_device", "resolve"]


def __getattr__(name: str):
    if name not in _LOADER:
        raise AttributeError(f"module 'qsink.models' has no attribute {name!r}")
    value = getattr(import_module("qsink.models.loader"), name)
    globals()[name] = value
    return value
