"""Fetch a Debian package file and read members out of it, without installing anything.

A ``.deb`` is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``;
we parse the ``ar`` framing ourselves and hand ``data.tar.*`` to :mod:`tarfile`, so reading works
on any OS. Downloading needs ``apt-get`` (Debian and derivatives).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from qsink.errors import QsinkError

AR_MAGIC = b"!<arch>\n"


def apt_download(package: str, dest: Path) -> Path:
    """Download ``package``'s ``.deb`` into ``dest`` with ``apt-get download`` and return its path.

    Runs ``apt-get update`` once if the package lists don't know the package yet.
    """
    if shutil.which("apt-get") is None:
        raise QsinkError(
            f"cannot fetch Debian package {package!r}: apt-get is not available on this machine; "
            "use --text FILE with any UTF-8 text instead"
        )
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        for attempt in range(2):
            proc = subprocess.run(
                ["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True
            )
            if proc.returncode == 0:
                break
            if attempt == 0 and "Unable to locate package" in proc.stderr:
                upd = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
                if upd.returncode != 0:
                    raise QsinkError(
                        f"apt-get does not know {package!r} and 'apt-get update' failed "
                        f"({_last_line(upd.stderr)}); run 'sudo apt-get update' and retry"
                    )
                continue
            raise QsinkError(
                f"'apt-get download {package}' failed ({_last_line(proc.stderr)}); "
                "check the network or use --text FILE"
            )
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise QsinkError(f"'apt-get download {package}' produced no .deb file; retry")
        final = dest / debs[0].name
        os.replace(debs[0], final)
    return final


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def ar_members(blob: bytes) -> dict[str, bytes]:
    """Split an ``ar`` archive into ``{name: content}``."""
    if not blob.startswith(AR_MAGIC):
        raise ValueError("not an ar archive")
    out, pos = {}, len(AR_MAGIC)
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + 60
        if start + size > len(blob):
            raise ValueError(f"ar member {name!r} is truncated")
        out[name] = blob[start : start + size]
        pos = start + size + (size & 1)  # members are 2-byte aligned
    return out


def read_deb_files(deb: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read the files ``wanted`` (paths inside the package, e.g. ``usr/share/...``) from a ``.deb``."""
    try:
        members = ar_members(Path(deb).read_bytes())
        data_name = next(n for n in members if n.startswith("data.tar"))
    except (ValueError, StopIteration) as e:
        raise QsinkError(f"{deb} is not a valid Debian package ({e}); delete it and fetch again") from None
    if data_name.endswith(".zst"):
        raise QsinkError(f"{deb} uses zstd compression, which this Python cannot read; use --text FILE")
    want = {w.lstrip("./") for w in wanted}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
            for info in tar:
                name = info.name.lstrip("./")
                if name in want and info.isfile():
                    found[name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise QsinkError(f"{deb} is corrupt ({e}); delete it and fetch again") from None
    missing = want - set(found)
    if missing:
        raise QsinkError(f"{deb} lacks {sorted(missing)}; the package layout changed, please report it")
    return found
