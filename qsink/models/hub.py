"""Models named by their Hugging Face hub id: ``org/name``, ``org/name@REVISION``, ``org/name:FILE.gguf``.

Resolution goes through ``huggingface_hub`` and its cache (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), with the layout every tool of the field
shares: ``models--org--name/snapshots/<commit>/`` and ``refs/<branch or tag>``.

* Online, one metadata request lists the revision's files and gives its commit. Only
  ``config.json``, the tokenizer files, the top-level ``*.safetensors`` (with their index) and the
  model's own ``*.py`` files (run only with ``--trust-remote-code``) are fetched, or the one named
  GGUF file. A repo whose weights are only pickles is refused before anything is downloaded.
* Offline (``HF_HUB_OFFLINE=1``) nothing touches the network: the revision is read from
  ``refs/`` (or is a commit) and the snapshot must be in the cache. When the hub cannot be reached
  (no network), the one failed request falls back to the cache the same way, without retries.

What this module returns is a snapshot folder (or a GGUF file in one) and the commit it belongs to;
:mod:`qsink.models.resolve` checks the files and hashes the weights like any local checkpoint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from qsink.errors import QsinkError, first_line

ACCEPTED = ("a built-in name ('qsink models'), a .gguf file, a checkpoint directory, or a Hugging Face hub id: "
            "org/name, org/name@REVISION (branch, tag or commit), org/name:FILE.gguf")

# what a checkpoint needs beside its weights (transformers' tokenizer and config files)
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
              "added_tokens.json", "chat_template.jinja", "chat_template.json", "spiece.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TRUE = {"1", "on", "yes", "true"}
_HUB_ID = re.compile(r"(?P<repo>[^@:\s]+)(?:@(?P<rev>[^@:\s]+))?(?::(?P<file>[^@:\s]+\.gguf))?", re.IGNORECASE)
_COMMIT = re.compile(r"[0-9a-f]{40}")


class NotCached(QsinkError):
    """A hub revision that is not in the local cache. ``fetchable``: the hub answered and a download
    would bring it (only ``fetch=False`` stopped it); otherwise it is offline or unreachable."""

    def __init__(self, message: str, fetchable: bool = False):
        super().__init__(message)
        self.fetchable = fetchable


@dataclass(frozen=True)
class HubId:
    repo: str  # org/name
    revision: str | None = None  # as asked; None is the repo's default branch
    file: str | None = None  # a GGUF file in the repo

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f":{self.file}" if self.file else "")


@dataclass(frozen=True)
class Snapshot:
    hub: HubId
    commit: str
    folder: Path  # snapshots/<commit>/ in the hub cache
    cached: bool  # True when nothing was fetched

    def to_dict(self) -> dict:
        return {"repo": self.hub.repo, "revision": self.hub.revision, "commit": self.commit,
                **({"file": self.hub.file} if self.hub.file else {})}


def looks_like_hub_id(spec: str) -> bool:
    """Whether ``spec`` (already known not to be a local path) is meant as a hub id: it has a ``/``
    and does not start like a path (``/``, ``.``, ``~``) or end in ``.gguf`` without a ``:FILE``."""
    return ("/" in spec and not spec.startswith(("/", ".", "~", "\\"))
            and not (spec.lower().endswith(".gguf") and ":" not in spec))


def parse_hub_id(spec: str) -> HubId:
    """``org/name[@REVISION][:FILE.gguf]`` -> :class:`HubId`; anything else is one line naming the forms."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    m = _HUB_ID.fullmatch(spec)
    bad = QsinkError(f"model {spec!r} is not an existing path and not a hub id; accepted: {ACCEPTED}")
    if m is None or m["repo"].count("/") != 1 or not all(m["repo"].split("/")):
        raise bad
    try:
        validate_repo_id(m["repo"])
    except HFValidationError:
        raise bad from None
    return HubId(m["repo"], m["rev"], m["file"])


def hub_cache() -> Path:
    """The hub cache directory, read from the environment at call time (as ``huggingface_hub`` does at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, or as ``huggingface_hub`` read it at
    import or was told since (lm-eval's local tasks set it in process)."""
    import huggingface_hub.constants as constants

    return constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").strip().lower() in _TRUE
                                           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def snapshot(hub: HubId, fetch: bool = True, log=print) -> Snapshot:
    """The cached snapshot of ``hub``'s revision, fetched first when online and ``fetch`` (only the
    files a checkpoint needs). ``fetch=False`` (a sweep's status) only looks: a revision not cached
    is a :class:`QsinkError`, as offline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if offline():
        return _from_cache(hub, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi(endpoint=_endpoint()).model_info(hub.repo, revision=hub.revision)
    except GatedRepoError:
        raise QsinkError(_gated(hub)) from None
    except RevisionNotFoundError:
        raise QsinkError(f"{hub.repo} has no revision {hub.revision!r} on the hub; name a branch, tag or commit it has "
                         f"(see https://huggingface.co/{hub.repo}/tree/main)") from None
    except RepositoryNotFoundError:
        raise QsinkError(f"no model repo {hub.repo!r} on the Hugging Face hub (or it is private and this machine is not "
                         "logged in: 'hf auth login'); check the id, or pass a local checkpoint directory") from None
    except _network_errors() as e:  # no network, a timeout, the hub down
        snap = _from_cache(hub, f"the hub could not be reached ({type(e).__name__})")
        log(f"{hub}: the hub could not be reached ({type(e).__name__}); using the cached snapshot {snap.commit[:12]}")
        return snap
    files = [s.rfilename for s in info.siblings or []]
    wanted = _wanted(hub, files)
    if not fetch:
        return _from_cache(hub, "nothing is fetched here", commit=info.sha, fetchable=True)
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(hub.repo, revision=hub.revision, cache_dir=hub_cache(), allow_patterns=wanted,
                                        endpoint=_endpoint()))
    except GatedRepoError:
        raise QsinkError(_gated(hub)) from None
    except _network_errors() as e:
        raise QsinkError(f"fetching {hub} from the hub failed ({type(e).__name__}: {first_line(e)}); rerun to resume "
                         "the download, or pass a local checkpoint directory") from None
    return Snapshot(hub, folder.name, folder, cached=False)


def _network_errors() -> tuple[type[BaseException], ...]:
    """What ``huggingface_hub`` raises when the hub cannot answer: its HTTP client's errors (httpx's
    ``HTTPError`` since 1.0, re-exported as ``errors.HTTPError`` by recent versions), offline mode,
    and OSError (the base of requests' errors and of a failed download)."""
    from huggingface_hub import errors

    return tuple(c for c in (getattr(errors, "HTTPError", None), errors.OfflineModeIsEnabled, OSError) if c is not None)


def _wanted(hub: HubId, files: list[str]) -> list[str]:
    """The repo files a checkpoint needs, or one line saying why the repo cannot give one."""
    top = [f for f in files if "/" not in f]
    if hub.file:
        if hub.file not in files:
            ggufs = [f for f in files if f.lower().endswith(".gguf")]
            listing = f"its GGUF files: {', '.join(ggufs[:8])}" if ggufs else "it has no GGUF files"
            raise QsinkError(f"{hub.repo} has no file {hub.file!r}; {listing}")
        return [hub.file]
    weights = [f for f in top if f.endswith(".safetensors")]
    if not weights:
        pickles = [f for f in top if f.endswith(PICKLE_SUFFIXES)]
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        if ggufs:
            raise QsinkError(f"{hub.repo} holds GGUF files, not a safetensors checkpoint; name one as "
                             f"{hub.repo}:FILE.gguf (files: {', '.join(ggufs[:6])})")
        if pickles:
            raise QsinkError(f"{hub.repo} has only pickle weights ({', '.join(pickles[:3])}), which qsink refuses to load "
                             "because unpickling can run arbitrary code; use a repo or revision with safetensors")
        raise QsinkError(f"{hub.repo} has no *.safetensors weights at its top level, so it is not a checkpoint qsink can load")
    extra = [f for f in top if f in SIDE_FILES or f.endswith((".safetensors.index.json", ".py"))]
    return sorted(set(weights + extra))


def _from_cache(hub: HubId, why: str, commit: str | None = None, fetchable: bool = False) -> Snapshot:
    """The cached snapshot of ``hub`` without a network call (``commit``: the revision's commit, when known)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub.repo, revision=commit or hub.revision, cache_dir=hub_cache(),
                                        local_files_only=True, allow_patterns=[hub.file or "config.json"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError):  # IncompleteSnapshotError is a LocalEntryNotFoundError
        fetch = (f"fetch it with 'hf download {hub.repo}{' --revision ' + hub.revision if hub.revision else ''}' "
                 f"{'(unset HF_HUB_OFFLINE first) ' if offline() else 'on a machine with network '}"
                 "or pass a local checkpoint directory")
        cached = _cached_revisions(hub.repo)
        if not cached:
            raise NotCached(f"{hub.repo} is not in the local Hugging Face cache ({hub_cache()}) and {why}; {fetch}",
                            fetchable) from None
        asked = f"commit {commit[:12]} of {hub.revision or 'main'}" if commit and commit != hub.revision else \
            f"revision {hub.revision or 'main'!r}"
        raise NotCached(f"{hub.repo} is cached, but not at {asked} (cached: {', '.join(cached)}) and {why}; "
                        f"name a cached revision as {hub.repo}@REVISION, or {fetch}", fetchable) from None
    return Snapshot(hub, folder.name, folder, cached=True)


def _cached_revisions(repo: str) -> list[str]:
    """``refs (commit)`` or ``commit`` for each snapshot of ``repo`` in the cache, newest first."""
    return [f"{'/'.join(r['refs'])} ({r['commit'][:12]})" if r["refs"] else r["commit"][:12]
            for r in cached_models() if r["repo"] == repo]


def _gated(hub: HubId) -> str:
    return (f"{hub.repo} is a gated repo and this machine has no access to it: accept its terms at "
            f"https://huggingface.co/{hub.repo}, then log in with 'hf auth login' (or set HF_TOKEN) and rerun")



def cached_models() -> list[dict]:
    """The model repos in the local hub cache, one row per cached revision: the spec that names it,
    its commit, the refs pointing at it, what its weights are and their size."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache())
    except CacheNotFound:
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            names = [f.file_name for f in rev.files]
            ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
            kind = ("safetensors" if any(n.endswith(".safetensors") for n in names)
                    else "gguf" if ggufs else "no weights")
            refs = sorted(rev.refs)
            spec = repo.repo_id if "main" in refs else f"{repo.repo_id}@{refs[0] if refs else rev.commit_hash}"
            if kind == "gguf":
                spec += f":{ggufs[0]}"
            rows.append({"spec": spec, "repo": repo.repo_id, "commit": rev.commit_hash, "refs": refs, "weights": kind,
                         "size": rev.size_on_disk, "folder": rev.snapshot_path})
    return rows
