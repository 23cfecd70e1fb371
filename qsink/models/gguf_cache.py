"""The safetensors copy of a GGUF model, kept in ``$QSINK_HOME/models/gguf-<sha16>/``.

transformers dequantizes a GGUF file to float once (~30 s for 135M parameters); the copy records
the sha256 of every file it holds and is checked against them on every use (through the
:func:`qsink.files.sha256_cached` memo, so an unchanged file is not read again). A missing, damaged
or unverifiable copy is rebuilt from the GGUF under a per-model lock, so concurrent runs convert
once; temporary directories of killed conversions are swept on the next conversion.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from qsink.errors import QsinkError
from qsink.files import qsink_home, sha256_cached, sha256_file
from qsink.models.checkpoint import staged_checkpoint
from qsink.models.resolve import ResolvedModel

SOURCE_FILE = "qsink-source.json"  # in a GGUF cache: the GGUF it came from and the sha256 of every other file


def gguf_cache_dir(resolved: ResolvedModel) -> Path:
    """Where the safetensors copy of a GGUF model is cached: ``$QSINK_HOME/models/gguf-<sha16>``."""
    return qsink_home() / "models" / f"gguf-{resolved.sha256[:16]}"


def cached_copy(resolved: ResolvedModel, log=print) -> Path:
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
    with staged_checkpoint(out, model, tok) as tmp:
        files = {name: sha256_file(tmp / name) for name in _cache_files(tmp)}
        (tmp / SOURCE_FILE).write_text(json.dumps({**resolved.to_dict(), "files": files}, indent=2))
        _install(tmp, out, resolved)


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
