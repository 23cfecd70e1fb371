"""Files, below every stage: atomic writes, sha256 (remembered for large files), the cache root,
and YAML recipes with ``include:``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename, so
    readers see the old file or the whole new one, never half of it. The file is world-readable."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write_text` for bytes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def qsink_home() -> Path:
    """The cache root: ``$QSINK_HOME``, else ``~/.cache/qsink``."""
    return Path(os.environ.get("QSINK_HOME") or Path.home() / ".cache" / "qsink").expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_cached(path: Path, settle_ns: int = 2_000_000_000) -> str:
    """sha256 of a file, remembered in ``$QSINK_HOME/hashes.json`` so a large file is read once.

    The memo is keyed by path, size, mtime, ctime and inode. A user can put an edited file's mtime
    back (``touch -d``) but not its ctime, which the kernel sets on every change, so an edited or
    replaced file never matches a remembered entry.

    Args:
        path: the file to hash.
        settle_ns: a file whose ctime is this recent is hashed but not remembered: timestamps advance
            in coarse ticks, so a second change within the tick of the first would leave them as they were.

    Returns:
        The hex sha256 of the file's current contents.
    """
    path = Path(path).resolve()
    started = time.time_ns()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    store = qsink_home() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):  # valid JSON but not a memo (an edited or foreign file): start afresh
        known = {}
    if key in known:
        return known[key]
    digest = sha256_file(path)
    if st.st_ctime_ns > started - settle_ns:
        return digest
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}  # entries for older contents
    known[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(known, indent=0))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def merge_dicts(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML recipe with its ``include:`` files (relative to it) merged underneath, depth first."""
    import yaml

    from qsink.errors import QsinkError

    path = Path(path).resolve()
    if path in _seen:
        raise QsinkError(f"recipe include cycle: {' -> '.join(str(p) for p in _seen + (path,))}")
    if not path.is_file():
        raise QsinkError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise QsinkError(f"recipe {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise QsinkError(f"recipe {path} must be a mapping of keys to values")
    include = raw.pop("include", None)
    if include is None:
        return raw
    includes = [include] if isinstance(include, str) else include
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise QsinkError(f"recipe {path}: include must be a file name or a list of file names, not {include!r}")
    base: dict = {}
    for inc in includes:
        base = merge_dicts(base, load_yaml(path.parent / inc, _seen + (path,)))
    return merge_dicts(base, raw)
