"""A directory of records: atomic writes, lookup by cell key, loading for the leaderboard."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from qsink.files import atomic_write_text
from qsink.errors import QsinkError
from qsink.records.record import SCHEMA

# what the readers of each schema need in every record; MAPPINGS must be JSON objects
REQUIRED = {SCHEMA: ("key", "status", "identity", "config", "metrics")}
MAPPINGS = ("identity", "config", "metrics", "summary")


class RecordStore:
    """Records live as ``DIR/<stem>__<key12>.json`` (stem: ``<model>__<scheme>`` for evaluation
    cells, ``<model>__profile`` for profiles); a cell is done iff its file exists."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def ensure_writable(self) -> None:
        """Fail early, before any compute, if records cannot be written here. Creates nothing: the
        directory is made by the first :meth:`write`, so a run that fails before its first record
        leaves no empty folder behind."""
        if self.root.exists() and not self.root.is_dir():
            raise QsinkError(f"results directory {self.root} is a file; pass --out with a directory")
        existing = next(p for p in (self.root, *self.root.absolute().parents) if p.exists())
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".qsink-probe.")  # catches read-only file systems too
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise QsinkError(f"results directory {self.root} is not writable ({e.strerror or e}); "
                             "pass --out with a directory you can write to") from None

    def path_for(self, stem: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")
        return self.root / f"{slug}__{key[:12]}.json"

    def find(self, key: str) -> Path | None:
        hits = list(self.root.glob(f"*__{key[:12]}.json")) if self.root.is_dir() else []
        return hits[0] if hits else None

    def snapshot(self) -> "RecordSnapshot":
        """This store with its directory listed once: for looking many keys up at one moment (a
        sweep's status), where a glob per key costs a directory scan per key."""
        return RecordSnapshot(self.root)

    def find_ok(self, key: str) -> tuple[Path, dict] | None:
        """The record for ``key`` if it exists and succeeded (failed cells are run again)."""
        path = self.find(key)
        if path is None:
            return None
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return (path, rec) if rec.get("status", "ok") == "ok" else None

    def write(self, record: dict, stem: str) -> Path:
        path = self.path_for(stem, record["key"])
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2))
        return path

    def load_all(self, schema: str = SCHEMA, required: tuple[str, ...] = ()) -> list[dict]:
        """Every record of ``schema`` in the directory; one that lacks a part the readers need (a
        hand-made or truncated file) is an error naming the file, never a traceback later."""
        if not self.root.is_dir():
            raise QsinkError(f"results directory {self.root} does not exist; run 'qsink evaluate --out {self.root}' first or pass --results")
        need = required or REQUIRED.get(schema, ("key",))
        records = []
        for p in sorted(self.root.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (ValueError, OSError):
                raise QsinkError(f"record {p} is not valid JSON; delete it and rerun the cell") from None
            if isinstance(rec, dict) and rec.get("schema") == schema:
                missing = [k for k in need if not isinstance(rec.get(k), dict if k in MAPPINGS else (str, dict, list))]
                if missing:
                    raise QsinkError(f"record {p} has no valid {', '.join(missing)}, so qsink did not write it (or it was "
                                     "edited); delete it and rerun its cell")
                records.append(rec)
        return records


_KEY12 = re.compile(r"[0-9a-f]{12}")


class RecordSnapshot(RecordStore):
    """A :class:`RecordStore` whose :meth:`find` answers from one listing of the directory, taken
    when it is made: the same file the glob of :meth:`RecordStore.find` gives first (both walk the
    directory in ``os.scandir`` order), and only that file is read by :meth:`find_ok`. Records
    written after the listing are not seen: make a new snapshot for a new look."""

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._by_key: dict[str, Path] = {}
        try:
            with os.scandir(self.root) as entries:
                names = [e.name for e in entries]
        except OSError:  # missing, a file, unreadable: no records, as the glob finds none
            names = []
        for name in names:  # "<stem>__<key12>.json"
            k = name[-17:-5]
            if name.endswith(".json") and name[-19:-17] == "__" and _KEY12.fullmatch(k) and k not in self._by_key:
                self._by_key[k] = self.root / name

    def find(self, key: str) -> Path | None:
        k = key[:12]
        if not _KEY12.fullmatch(k):  # not a key qsink makes (tests, hand-made files): the glob, as ever
            return super().find(key)
        return self._by_key.get(k)

    def write(self, record: dict, stem: str) -> Path:
        path = super().write(record, stem)
        self._by_key.setdefault(record["key"][:12], path)
        return path
