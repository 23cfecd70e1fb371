"""Resolve a model spec to files on disk and load it as a Hugging Face causal LM.

A spec is one of:

* a built-in name (``qsink models`` lists them);
* a ``.gguf`` file: transformers dequantizes it to float once (slow: ~25 s for SmolLM2 here),
  and qsink caches the result as safetensors in ``$QSINK_HOME/models/gguf-<sha256>/``, checked
  against the sha256 of each file on every use and rebuilt when damaged;
* a Hugging Face checkpoint directory with ``config.json`` and safetensors weights. Pickle
  weights (``.bin``, ``.pt``) are refused: loading them can run arbitrary code.

Resolution (:func:`resolve`) touches no weights beyond hashing, so a results cell can be looked up
before any model is loaded.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qsink.config import qsink_home, sha256_cached, sha256_file
from qsink.errors import QsinkError
from qsink.models.zoo import BUILTINS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}
SOURCE_FILE = "qsink-source.json"  # in a GGUF cache: the GGUF it came from and the sha256 of every other file


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user typed
    kind: str  # "builtin", "gguf" or "hf"
    source: Path  # the file or directory the weights come from
    sha256: str  # of the GGUF file, or of the safetensors files of a directory
    name: str  # short display name

    def to_dict(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "source": str(self.source), "sha256": self.sha256, "name": self.name}


def resolve(spec: str | ResolvedModel) -> ResolvedModel:
    """Find the files behind ``spec`` and check that they look sound, without loading weights."""
    if isinstance(spec, ResolvedModel):
        return spec
    path = Path(spec).expanduser()
    if spec in BUILTINS:
        builtin = BUILTINS.get(spec)
        gguf_path = builtin.locate()
        if gguf_path is None:
            raise QsinkError(f"built-in model {spec!r} is not installed; run: {builtin.install}")
        _check_gguf(gguf_path)
        return ResolvedModel(spec, "builtin", gguf_path, sha256_cached(gguf_path), spec)
    if not path.exists():
        close = difflib.get_close_matches(spec, BUILTINS.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; check the spelling or run 'qsink models'"
        raise QsinkError(
            f"model {spec!r} is neither an existing path nor a built-in name "
            f"(built-ins: {', '.join(BUILTINS.names())}){hint}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise QsinkError(f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face checkpoint directory")
        _check_gguf(path)
        return ResolvedModel(spec, "gguf", path.resolve(), sha256_cached(path), path.stem)
    shards = _check_hf_dir(path)
    combined = hashlib.sha256("".join(sha256_cached(s) for s in shards).encode()).hexdigest()
    return ResolvedModel(spec, "hf", path.resolve(), combined, path.resolve().name)


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise QsinkError(f"{path} is not a GGUF file (bad magic bytes); re-download or re-export it")
    try:
        import gguf

        gguf.GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/IndexError/struct.error on damage
        raise QsinkError(f"{path} is a corrupt or truncated GGUF file ({e}); re-download or re-export it") from None


def _check_hf_dir(path: Path) -> list[Path]:
    if not (path / "config.json").is_file():
        raise QsinkError(f"{path} has no config.json, so it is not a Hugging Face checkpoint directory; pass the directory that holds config.json")
    try:
        json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise QsinkError(f"{path / 'config.json'} is not valid JSON ({e}); re-save the checkpoint") from None
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise QsinkError(
                f"{path} holds only pickle weights ({', '.join(pickles[:3])}), which qsink refuses to load "
                "because unpickling can run arbitrary code; convert them to safetensors (save_pretrained(..., safe_serialization=True))"
            )
        raise QsinkError(f"{path} has no *.safetensors weights; save the model with save_pretrained first")
    for shard in shards:
        check_safetensors(shard)
    return shards


def check_safetensors(path: Path) -> None:
    """Verify a safetensors file's header and that its size matches what the header declares."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) != size:
            raise ValueError(f"file has {size} bytes, header expects {8 + n + max(ends, default=0)}")
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise QsinkError(f"{path} is a corrupt or truncated safetensors file ({e}); re-download or re-save it") from None


def gguf_cache_dir(resolved: ResolvedModel) -> Path:
    """Where the safetensors copy of a GGUF model is cached: ``$QSINK_HOME/models/gguf-<sha16>``."""
    return qsink_home() / "models" / f"gguf-{resolved.sha256[:16]}"


def _convert_gguf(resolved: ResolvedModel, log=print) -> Path:
    """The safetensors cache of a GGUF model, verified file by file, converted or rebuilt if needed.

    A cache is used only when every file in it still has the sha256 recorded when it was written. A
    missing, damaged or unverifiable cache is (re)built from the GGUF under a per-model lock, so
    concurrent runs convert once: the others wait, then find the finished cache.

    Args:
        resolved: a built-in or ``.gguf`` model.
        log: called with one line when the cache is built, rebuilt or waited for.

    Returns:
        The cache directory.

    Raises:
        QsinkError: the GGUF cannot be converted (naming a damaged cache to delete, if there is one).
    """
    out = gguf_cache_dir(resolved)
    if _cache_problem(out, resolved) is None:
        return out
    with _conversion_lock(out, log):
        _sweep_stale_temps(out)
        problem = _cache_problem(out, resolved)  # another process may have built it while we waited
        if problem is not None:
            _rebuild(resolved, out, problem, log)
    return out


def _cache_problem(out: Path, resolved: ResolvedModel) -> str | None:
    """Why the cache ``out`` cannot be used for ``resolved``, or ``None`` when every file checks out.

    Hashes go through :func:`sha256_cached`, so an unchanged cache is re-verified without re-reading it.
    """
    try:
        meta = json.loads((out / SOURCE_FILE).read_text())
    except FileNotFoundError:
        return f"{SOURCE_FILE} is missing"
    except (OSError, ValueError) as e:
        return f"{SOURCE_FILE} is unreadable ({type(e).__name__})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{SOURCE_FILE} records no file hashes (written by an older qsink)"
    if meta.get("sha256") != resolved.sha256:
        return "it was converted from a different GGUF"
    for name, digest in files.items():
        if not (out / name).is_file():
            return f"{name} is missing"
        if sha256_cached(out / name) != digest:
            return f"{name} has changed since it was written"
    extra = sorted(set(_cache_files(out)) - set(files))
    return f"{extra[0]} was not written by qsink" if extra else None


def _cache_files(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder`` that :data:`SOURCE_FILE` records hashes of."""
    return sorted(rel for p in folder.rglob("*") if p.is_file() and (rel := p.relative_to(folder).as_posix()) != SOURCE_FILE)


@contextlib.contextmanager
def _conversion_lock(out: Path, log=print):
    """Hold ``models/.gguf-<sha16>.lock`` (``flock``, released when the process dies) for converting ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(out), "a") as f:
        if not _try_lock(f):
            log(f"waiting for another qsink process to finish converting {out} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _lock_path(out: Path) -> Path:
    """The lock file beside a cache directory: ``models/.gguf-<sha16>.lock``."""
    return out.parent / f".{out.name}.lock"


def _try_lock(f) -> bool:
    """Take an exclusive ``flock`` on the open file ``f`` if nobody holds one; never wait."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _sweep_stale_temps(out: Path) -> None:
    """Remove the temp dirs (``.gguf-<sha16>.XXXX``) of conversions that were killed before cleaning up.

    Called with ``out``'s lock held, so ``out``'s own temp dirs are stale; another model's are stale
    when its lock is free (a conversion in progress holds it).
    """
    for tmp in out.parent.glob(".gguf-*.*"):
        if not tmp.is_dir() or tmp.is_symlink():
            continue  # the lock files
        cache = out.parent / tmp.name.split(".")[1]
        if cache == out:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        with open(_lock_path(cache), "a") as f:
            if _try_lock(f):
                shutil.rmtree(tmp, ignore_errors=True)


def _rebuild(resolved: ResolvedModel, out: Path, problem: str, log=print) -> None:
    """Convert ``resolved`` into ``out``, replacing a damaged cache there; one log line says which."""
    damaged = out.exists() or out.is_symlink()
    if damaged:
        log(f"the cached copy {out} is damaged ({problem}); rebuilding it from {resolved.source.name} ...")
    else:
        log(f"converting {resolved.source.name} to a cached safetensors copy in {out} (once; ~30 s for 135M) ...")
    try:
        _write_cache(resolved, out)
    except (QsinkError, OSError) as e:
        if not damaged:
            raise
        raise QsinkError(f"the cached copy {out} is damaged ({problem}) and rebuilding it failed ({e}); delete {out} and rerun") from None


def _write_cache(resolved: ResolvedModel, out: Path) -> None:
    """Dequantize the GGUF into a temp dir beside ``out``, record every file's sha256, move it into place."""
    model, tok = _dequantize(resolved)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {name: sha256_file(tmp / name) for name in _cache_files(tmp)}
        (tmp / SOURCE_FILE).write_text(json.dumps({**resolved.to_dict(), "files": files}, indent=2))
        _install(tmp, out, resolved)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantize(resolved: ResolvedModel):
    """``(model, tokenizer)`` read from the GGUF by transformers, in float32, ready for ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(resolved.source.parent), resolved.source.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:
        raise QsinkError(f"transformers could not load {resolved.source} ({type(e).__name__}: {e}); is its architecture supported by transformers' GGUF loader?") from None
    # transformers refuses save_pretrained on a GGUF-loaded model while these are set
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _install(tmp: Path, out: Path, resolved: ResolvedModel) -> None:
    """Rename the finished ``tmp`` to ``out``. A valid cache found there (written meanwhile by a qsink
    that takes no lock) is kept and ``tmp`` left for the caller to discard; a damaged one is replaced."""
    try:
        os.replace(tmp, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise QsinkError(f"could not move the converted copy into {out} ({e}); check that {out.parent} is writable") from None
        if _cache_problem(out, resolved) is not None:
            _remove(out)
            os.replace(tmp, out)


def _remove(path: Path) -> None:
    """Delete a damaged cache, whether a directory, a file or a link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def checkpoint_dir(resolved: ResolvedModel, log=print) -> Path:
    """The directory that ``from_pretrained`` reads for this model (converting GGUF if needed)."""
    return resolved.source if resolved.kind == "hf" else _convert_gguf(resolved, log=log)


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

    if dtype not in DTYPES:
        raise QsinkError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
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
        raise QsinkError(f"transformers could not load {resolved.spec} ({_first_line(e)})") from None
    except (OSError, KeyError, RuntimeError) as e:
        raise QsinkError(f"transformers could not load {resolved.spec} ({type(e).__name__}: {_first_line(e)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        advice = "save one with tokenizer.save_pretrained" if resolved.kind == "hf" else f"delete {folder} and rerun to rebuild it"
        raise QsinkError(f"{folder} has no usable tokenizer ({_first_line(e)}); {advice}") from None
    if where != "map":
        model.to(where)
    model.eval()
    return model, tokenizer


def check_ctx(model, ctx: int, name: str) -> None:
    """Refuse a window longer than the model's position table."""
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and ctx > max_pos:
        raise QsinkError(f"--ctx {ctx} exceeds {name}'s maximum of {max_pos} positions; pass --ctx {max_pos} or less")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
