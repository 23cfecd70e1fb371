"""Resolve a model spec to files on disk and check that they look sound, without loading weights.

A spec is one of:

* a built-in name (``qsink models`` lists them);
* a ``.gguf`` file: transformers dequantizes it to float once (slow: ~25 s for SmolLM2 here),
  and qsink caches the result as safetensors in ``$QSINK_HOME/models/gguf-<sha256>/``, checked
  against the sha256 of each file on every use and rebuilt when damaged;
* a Hugging Face checkpoint directory with ``config.json`` and safetensors weights. Pickle
  weights (``.bin``, ``.pt``) are refused: loading them can run arbitrary code;
* a Hugging Face hub id, ``org/name``, ``org/name@REVISION`` or ``org/name:FILE.gguf``
  (:mod:`qsink.models.hub`): its snapshot in the hub cache, fetched when online, then checked as a
  directory or a GGUF file is. An existing local path of the same spelling wins.

Resolution (:func:`resolve`) touches no weights beyond hashing, so a results cell can be looked up
before any model is loaded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from qsink.errors import QsinkError
from qsink.files import atomic_write_text, qsink_home, sha256_cached
from qsink.models import hub as hub_mod
from qsink.models.hub import PICKLE_SUFFIXES, HubId
from qsink.models.zoo import BUILTINS


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user typed
    kind: str  # "builtin", "gguf" or "hf"
    source: Path  # the file or directory the weights come from
    sha256: str  # of the GGUF file, or of the safetensors files of a directory
    name: str  # short display name
    origin: str = "local"  # "builtin", "local" (a path) or "hub"
    hub: HubId | None = None  # the hub id a hub model was named by
    commit: str | None = None  # the hub commit its files come from
    weights: tuple[tuple[str, str], ...] = ()  # (file name, sha256) of each weight file

    def key_fields(self) -> dict:
        """What a record's identity says about the model: the weights' sha256, and for a hub model the
        commit, so that a branch that moved (a new config or tokenizer with the same weights) is a new cell."""
        return {"model_sha256": self.sha256, **({"model_commit": self.commit} if self.commit else {})}

    @property
    def pin(self) -> str:
        """``key_fields`` as one string, for the caches that key on the model (calibration, rotations)."""
        return self.sha256 + (f"@{self.commit}" if self.commit else "")

    def to_dict(self) -> dict:
        out = {"spec": self.spec, "kind": self.kind, "source": str(self.source), "sha256": self.sha256, "name": self.name,
               "origin": self.origin}
        if self.hub:
            out["hub"] = {"repo": self.hub.repo, "revision": self.hub.revision, "commit": self.commit,
                          **({"file": self.hub.file} if self.hub.file else {})}
        if self.weights:
            out["weights"] = dict(self.weights)
        return out


def resolve(spec: str | ResolvedModel, log=print, verify: bool = True, fetch: bool = True) -> ResolvedModel:
    """Find the files behind ``spec`` and check that they look sound, without loading weights (a
    chunked built-in is assembled from its packages the first time, with one ``log`` line).

    ``verify=False`` hashes a GGUF file without parsing it (seconds for a large vocabulary): enough
    to look its records up, since a file whose sha256 matches a record's is the file that was
    evaluated. A sweep's status uses it; everything that loads the model keeps the full check.
    ``fetch=False`` (the same status) resolves a hub id from the cache only: a revision that is not
    cached is a :class:`QsinkError`, not a download."""
    if isinstance(spec, ResolvedModel):
        return spec
    path = Path(spec).expanduser()
    if not path.exists() and spec not in BUILTINS and hub_mod.looks_like_hub_id(spec):
        return _resolve_hub(spec, log, verify, fetch)
    if spec in BUILTINS:
        builtin = BUILTINS.get(spec)
        gguf_path = builtin.locate()
        if gguf_path is None and builtin.parts:
            gguf_path = builtin.assemble(log=log)  # names the chunk packages that are missing
        if gguf_path is None:
            raise QsinkError(f"built-in model {spec!r} is not installed; run: {builtin.install}")
        return ResolvedModel(spec, "builtin", gguf_path, _checked_gguf(gguf_path, verify), spec, origin="builtin")
    if not path.exists():
        close = difflib.get_close_matches(spec, BUILTINS.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; check the spelling or run 'qsink models'"
        raise QsinkError(
            f"model {spec!r} is neither an existing path nor a built-in name "
            f"(built-ins: {', '.join(BUILTINS.names())}; hub ids are org/name){hint}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise QsinkError(f"{path} is a file but not a .gguf; pass a .gguf file or a Hugging Face checkpoint directory")
        digest = _checked_gguf(path, verify)
        return ResolvedModel(spec, "gguf", path.resolve(), digest, path.stem, weights=((path.name, digest),))
    if hub_mod.looks_like_hub_id(spec):
        log(f"{spec}: the local directory {path.resolve()} is used (a path wins over a hub id of the same spelling)")
    combined, weights = _hashed_shards(_check_hf_dir(path))
    return ResolvedModel(spec, "hf", path.resolve(), combined, path.resolve().name, weights=weights)


def precheck(specs: list[str], log=print) -> None:
    """Raise the first model error that a download would not fix, before anything heavy is imported
    or fetched: a missing path, a malformed or unknown hub id, a revision the hub lacks, pickle-only
    weights, and a hub model that is not cached while offline or without network, all within a
    second. A hub model that the hub has and the cache lacks passes: it is fetched when the run
    resolves it, after the rest of the command has been checked."""
    for spec in specs:
        try:
            resolve(spec, log=log, verify=False, fetch=False)
        except hub_mod.NotCached as e:
            if not e.fetchable:
                raise


def _hashed_shards(shards: list[Path]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The combined sha256 of a checkpoint's safetensors files (in name order) and each file's own.

    A file in the hub cache is a link to a blob named by its sha256 (for files stored with LFS, as
    weights are); a blob whose content hashes otherwise is damaged, and is refused."""
    weights = []
    for s in shards:
        digest = sha256_cached(s)
        blob = s.resolve()
        if blob != s.absolute() and blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name) \
                and blob.name != digest:
            raise QsinkError(f"{s} (blob {blob}) does not hash to its name: the cached download is damaged; "
                             f"delete {blob} and rerun to fetch it again")
        weights.append((s.name, digest))
    combined = hashlib.sha256("".join(d for _, d in weights).encode()).hexdigest()
    return combined, tuple(weights)


def _resolve_hub(spec: str, log, verify: bool, fetch: bool) -> ResolvedModel:
    hub = hub_mod.parse_hub_id(spec)
    snap = hub_mod.snapshot(hub, fetch=fetch, log=log)
    if hub.file:
        f = snap.folder / hub.file
        if not f.is_file():
            raise QsinkError(f"{hub} is cached without {hub.file}; fetch it with 'hf download {hub.repo} {hub.file}'")
        digest = _checked_gguf(f, verify)
        return ResolvedModel(spec, "gguf", f, digest, Path(hub.file).stem, origin="hub", hub=hub, commit=snap.commit,
                             weights=((hub.file, digest),))
    combined, weights = _hashed_shards(_check_hf_dir(snap.folder))
    return ResolvedModel(spec, "hf", snap.folder, combined, hub.repo.split("/")[1], origin="hub", hub=hub,
                         commit=snap.commit, weights=weights)


# content hashes of GGUF files that parsed in this process: a read-only $QSINK_HOME (where the memo
# below cannot be written) costs one parse per file and process, not one per sweep job
_PARSED_HERE: set[str] = set()


def _checked_gguf(path: Path, verify: bool = True) -> str:
    """The sha256 of a GGUF file that parses. Parsing a large vocabulary takes seconds (12 s for
    Gemma 3's 262k tokens here), so the content hashes that parsed once are remembered in
    ``$QSINK_HOME/gguf-parsed.json`` and not parsed again. ``verify=False``: the hash alone."""
    digest = sha256_cached(path)
    if not verify or digest in _PARSED_HERE:
        return digest
    memo = qsink_home() / "gguf-parsed.json"
    try:
        parsed = set(json.loads(memo.read_text()))
    except (OSError, ValueError, TypeError):
        parsed = set()
    if digest not in parsed:
        _check_gguf(path)
        try:
            atomic_write_text(memo, json.dumps(sorted(parsed | {digest})))
        except OSError:
            pass  # a read-only cache only costs a parse next time
    _PARSED_HERE.add(digest)
    return digest


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
    index = path / "model.safetensors.index.json"
    if shards and index.is_file():  # a sharded checkpoint: every shard its index names must be here
        try:
            named = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise QsinkError(f"{index} is not a valid safetensors index ({e}); re-save or re-download the checkpoint") from None
        missing = sorted(named - {s.name for s in shards})
        if missing:
            raise QsinkError(f"{path} lacks {len(missing)} weight shard(s) its index names ({', '.join(missing[:3])}); "
                             "the download or copy is incomplete: fetch or copy it again")
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
