"""Load a resolved model as a Hugging Face causal LM: on which device, in which dtype, with which code.

A GGUF model is read from its verified safetensors copy (:mod:`qsink.models.gguf_cache`); custom
model code (``auto_map``) runs only with ``trust_remote_code``.
"""

from __future__ import annotations

import json
from pathlib import Path

from qsink.errors import QsinkError, first_line
from qsink.models import family as _family  # noqa: F401  (registers model_type "qsink" with transformers)
from qsink.models import gguf_cache
from qsink.models.resolve import ResolvedModel, resolve
from qsink.validate import DTYPES, check_dtype



def checkpoint_dir(resolved: ResolvedModel, log=print) -> Path:
    """The directory that ``from_pretrained`` reads for this model (converting GGUF if needed)."""
    return resolved.source if resolved.kind == "hf" else gguf_cache.cached_copy(resolved, log=log)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "map":  # the loader's device_map="auto"; elsewhere the first GPU or the CPU
        device = "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QsinkError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def placement(weight_bytes: int, free_bytes: list[int], device: str = "auto", headroom: float = 0.8) -> str:
    """Where a model of ``weight_bytes`` goes: ``"cpu"``, one ``"cuda[:N]"`` device, or ``"map"``
    (``device_map="auto"``: accelerate spreads the layers over every GPU, then CPU memory).

    ``free_bytes`` is the free memory of each visible GPU. With ``device="auto"`` a model that fits in
    ``headroom`` of the first GPU's free memory (activations and quantization need the rest) goes
    there whole; a larger one is mapped. An explicit ``cpu`` or ``cuda:N`` is obeyed as given.
    """
    if device not in ("auto", "map"):
        return device
    if not free_bytes:
        return "cpu"
    if device == "auto" and weight_bytes <= headroom * free_bytes[0]:
        return "cuda"
    return "map"


def _weight_bytes(folder: Path, dtype: str) -> int:
    """Bytes the weights take in ``dtype`` (from the safetensors files' sizes, which hold them in their saved dtype)."""
    files = list(folder.glob("*.safetensors"))
    saved = sum(f.stat().st_size for f in files)
    try:
        saved_dtype = json.loads((folder / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        saved_dtype = "float32"
    width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(str(saved_dtype), 4)
    return saved * {"fp32": 4, "bf16": 2, "fp16": 2}[dtype] // width


def load(spec: str | ResolvedModel, dtype: str = "fp32", device: str = "auto", trust_remote_code: bool = False, log=print):
    """Load ``spec`` as ``(model, tokenizer)`` in eval mode.

    Example:
        >>> model, tok = load("smollm2-135m")          # doctest: +SKIP
        >>> model.config.num_hidden_layers              # doctest: +SKIP
        30
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    resolved = resolve(spec)
    folder = checkpoint_dir(resolved, log=log)
    config = json.loads((folder / "config.json").read_text())
    if "auto_map" in config and not trust_remote_code:
        raise QsinkError(f"{resolved.spec} needs custom model code from its directory (config.json has auto_map); rerun with --trust-remote-code if you trust it")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    where = pick_device(device) if device not in ("auto", "map") else placement(
        _weight_bytes(folder, dtype), [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())], device)
    extra = {"device_map": "auto"} if where == "map" else {}
    if where == "map":
        log(f"{resolved.name}: weights larger than one GPU's free memory; spreading them with device_map='auto'")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, DTYPES[dtype]), use_safetensors=True, trust_remote_code=trust_remote_code, **extra
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise QsinkError(f"{resolved.spec} needs custom code from its directory; rerun with --trust-remote-code if you trust it") from None
        raise QsinkError(f"transformers could not load {resolved.spec} ({first_line(e)})") from None
    except (OSError, KeyError, RuntimeError) as e:
        raise QsinkError(f"transformers could not load {resolved.spec} ({type(e).__name__}: {first_line(e)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        advice = "save one with tokenizer.save_pretrained" if resolved.kind == "hf" else f"delete {folder} and rerun to rebuild it"
        raise QsinkError(f"{folder} has no usable tokenizer ({first_line(e)}); {advice}") from None
    if where != "map":
        model.to(where)
    model.eval()
    return model, tokenizer


def check_ctx(model, ctx: int, name: str) -> None:
    """Refuse a window longer than the model's position table."""
    from qsink.models.adapter import text_config

    max_pos = getattr(text_config(model), "max_position_embeddings", None)
    if max_pos is not None and ctx > max_pos:
        raise QsinkError(f"--ctx {ctx} exceeds {name}'s maximum of {max_pos} positions; pass --ctx {max_pos} or less")

