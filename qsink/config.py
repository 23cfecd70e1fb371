"""Settings shared by every stage: where qsink keeps its cache, and file hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def qsink_home() -> Path:
    """The cache root: ``$QSINK_HOME``, else ``~/.cache/qsink``."""
    return Path(os.environ.get("QSINK_HOME") or Path.home() / ".cache" / "qsink").expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered in the cache by (path, size, mtime) so large files hash once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = qsink_home() / "hashes.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = sha256_file(path)
    known[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0))
        os.replace(tmp, store)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
