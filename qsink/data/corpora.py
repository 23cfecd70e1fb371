"""Named public-domain corpora, fetched from Debian packages into a verified local cache.

=========  ============================  =======================================================
name       Debian package                splits
=========  ============================  =======================================================
austen     r-cran-janeaustenr            ``test``: *Persuasion* + *Northanger Abbey* (held out);
                                         ``train`` / ``validation``: the first 90% / last 10% of
                                         the lines of each of the other four novels
tdavid     sword-comm-tdavid             ``train``: Spurgeon's *Treasury of David*
web        sword-text-web                ``train``: the World English Bible
=========  ============================  =======================================================

The cache lives in ``$QSINK_HOME/corpora/NAME/`` with one ``SPLIT.txt`` per split and a
``manifest.json`` holding each file's sha256, which is checked every time the text is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qsink.files import atomic_write_text, qsink_home, sha256_file, sha256_text
from qsink.data import debian, readers
from qsink.data.text import Text
from qsink.errors import QsinkError
from qsink.registry import Registry


@dataclass(frozen=True)
class Corpus:
    name: str
    package: str  # Debian package that carries it
    description: str
    splits: tuple[str, ...]
    default_split: str
    members: tuple[str, ...]  # files read out of the package
    extract: Callable[[dict[str, bytes]], dict[str, str]]  # files -> {split: text}


CORPORA: Registry[Corpus] = Registry("corpus")

AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
AUSTEN_TEST = ("persuasion", "northanger abbey")
AUSTEN_OTHERS = ("sense and sensibility", "pride and prejudice", "mansfield park", "emma")
VALIDATION_FRACTION = 0.1


def _austen_splits(files: dict[str, bytes]) -> dict[str, str]:
    try:
        vectors = readers.read_rdb_character_vectors(files[AUSTEN_RDB])
    except ValueError as e:
        raise QsinkError(f"janeaustenr's R database could not be read ({e}); run 'qsink data fetch --force'") from None
    novels = {}
    for lines in vectors:
        lines = [ln or "" for ln in lines]
        title = next((ln.strip().lower() for ln in lines if ln.strip()), "")
        novels[title] = lines
    missing = [t for t in AUSTEN_TEST + AUSTEN_OTHERS if t not in novels]
    if missing:
        raise QsinkError(f"janeaustenr lacks the novels {missing}; the package changed, please report it")
    train, validation = [], []
    for title in AUSTEN_OTHERS:
        lines = novels[title]
        cut = int(len(lines) * (1 - VALIDATION_FRACTION))
        train.append("\n".join(lines[:cut]).strip())
        validation.append("\n".join(lines[cut:]).strip())
    test = ["\n".join(novels[t]).strip() for t in AUSTEN_TEST]
    return {"test": "\n\n".join(test), "train": "\n\n".join(train), "validation": "\n\n".join(validation)}


def _sword(prefix: str, suffixes: tuple[str, str]):
    def extract(files: dict[str, bytes]) -> dict[str, str]:
        parts = []
        for testament in ("ot", "nt"):
            index = files[f"{prefix}/{testament}.{suffixes[0]}"]
            data = files[f"{prefix}/{testament}.{suffixes[1]}"]
            try:
                parts.append(readers.sword_text(index, data))
            except (ValueError, OSError) as e:
                raise QsinkError(f"SWORD module {prefix} could not be read ({e}); run 'qsink data fetch --force'") from None
        return {"train": "\n".join(p for p in parts if p)}

    return extract


TDAVID = "usr/share/sword/modules/comments/zcom/tdavid"
WEB = "usr/share/sword/modules/texts/ztext/engWEB2015eb"

CORPORA.add(
    "austen",
    Corpus("austen", "r-cran-janeaustenr", "Jane Austen's six novels", ("test", "train", "validation"),
           "test", (AUSTEN_RDB,), _austen_splits),
)
CORPORA.add(
    "tdavid",
    Corpus("tdavid", "sword-comm-tdavid", "Spurgeon, The Treasury of David (commentary prose)", ("train",),
           "train", tuple(f"{TDAVID}/{t}.{s}" for t in ("ot", "nt") for s in ("czs", "czz")),
           _sword(TDAVID, ("czs", "czz"))),
)
CORPORA.add(
    "web",
    Corpus("web", "sword-text-web", "World English Bible", ("train",),
           "train", tuple(f"{WEB}/{t}.{s}" for t in ("ot", "nt") for s in ("bzs", "bzz")),
           _sword(WEB, ("bzs", "bzz"))),
)


def corpus_dir(name: str) -> Path:
    return qsink_home() / "corpora" / name


def is_fetched(name: str) -> bool:
    return (corpus_dir(name) / "manifest.json").exists()


def read_manifest(name: str) -> dict:
    """The cached manifest of corpus ``name``, checked to list every split of the corpus."""
    path = corpus_dir(name) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    complete = isinstance(splits, dict) and all(
        isinstance(splits.get(s), dict) and {"sha256", "chars"} <= set(splits[s]) for s in CORPORA.get(name).splits)
    if not complete:
        raise QsinkError(f"the cached manifest {path} is damaged or incomplete; run 'qsink data fetch {name} --force'")
    return manifest


def fetch(name: str, force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Download and extract corpus ``name`` into the cache; return its manifest."""
    corpus = CORPORA.get(name)
    out = corpus_dir(name)
    if is_fetched(name) and not force:
        return read_manifest(name)
    debs = qsink_home() / "debs"
    if force:
        for old in debs.glob(f"{corpus.package}_*.deb"):
            old.unlink()
    log(f"fetching {corpus.package} (Debian) for corpus {name!r} ...")
    deb = debian.apt_download(corpus.package, debs)
    splits = corpus.extract(debian.read_deb_files(deb, list(corpus.members)))
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"corpus": name, "package": corpus.package, "deb": deb.name, "deb_sha256": sha256_file(deb), "splits": {}}
    for split, text in splits.items():
        atomic_write_text(out / f"{split}.txt", text)
        manifest["splits"][split] = {"sha256": sha256_text(text), "chars": len(text), "bytes": len(text.encode())}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    log(f"  {name}: " + ", ".join(f"{s} {v['chars']:,} chars" for s, v in manifest["splits"].items()))
    return manifest


def load_corpus(name: str, split: str | None = None, log: Callable[[str], None] = print) -> Text:
    """Read a cached corpus split (fetching on first use) and verify its sha256."""
    corpus = CORPORA.get(name)
    split = split or corpus.default_split
    if split not in corpus.splits:
        raise QsinkError(f"corpus {name!r} has no split {split!r}; it has {', '.join(corpus.splits)}")
    if not is_fetched(name):
        log(f"corpus {name!r} is not in the cache yet ({corpus_dir(name)}); fetching it once")
        fetch(name, log=log)
    manifest = read_manifest(name)
    path = corpus_dir(name) / f"{split}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise QsinkError(f"cached corpus file {path} is missing or unreadable; run 'qsink data fetch {name} --force'") from None
    digest = sha256_text(text)
    if digest != manifest["splits"][split]["sha256"]:
        raise QsinkError(f"cached corpus file {path} does not match its recorded sha256; run 'qsink data fetch {name} --force'")
    return Text(f"{name}:{split}", text, digest)
