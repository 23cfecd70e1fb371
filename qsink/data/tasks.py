"""Local downstream tasks for lm-evaluation-harness, built deterministically from public data.

==================  ==========================================================================
task                items
==================  ==========================================================================
``qsink_cloze``     LAMBADA-style last-word prediction (Paperno et al. 2016, arXiv 1606.06031)
                    from the held-out Austen novels (``austen:test``): within each paragraph, a
                    passage of at least 50 words followed by a word that ends a sentence, is made
                    of at least 3 letters and already appears in the passage; context = the
                    passage (its last 200 words at most), target = that word without
                    punctuation. Passages never overlap: the next starts after the last target.
                    Metric: accuracy of the greedy continuation (and its perplexity).
``qsink_sentiment`` Binary sentiment of movie-review snippets from the VADER ground truth (Hutto
                    & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis
                    of Social Media Text"), read from the PyPI source distribution of
                    ``vaderSentiment==3.3.2``: mean rating >= 1 is positive, <= -1 negative, the
                    rest dropped. A seeded 100 items form the few-shot pool (``train``), the rest
                    are scored (``test``). Multiple choice between " negative" and " positive".
==================  ==========================================================================

``prepare_tasks(names)`` writes each task's JSON-lines file and an lm-eval YAML that points at it
into ``$QSINK_HOME/tasks/`` and returns that directory for ``TaskManager(include_path=...)``.
Files are rebuilt only when missing; every item file's sha256 is recorded in ``manifest.json``.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qsink.files import atomic_write_text, qsink_home, sha256_file, sha256_text
from qsink.errors import QsinkError
from qsink.registry import Registry

CLOZE_MIN_CONTEXT_WORDS = 50
CLOZE_MAX_CONTEXT_WORDS = 200
VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
FEWSHOT_POOL = 100


@dataclass(frozen=True)
class LocalTask:
    name: str
    description: str
    build: Callable[[Callable[[str], None]], dict[str, list[dict]]]  # log -> {split: items}
    yaml: str  # lm-eval task config; {files} is replaced by the data_files mapping
    version: int = 1  # bump when the item rule changes; cached items of another version are rebuilt


def cloze_items(text: str) -> list[dict]:
    """The cloze rule of the module docstring applied to every paragraph of ``text``."""
    items = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        start = 0  # passages do not overlap: the next one starts after the last target
        for i, word in enumerate(words):
            m = re.fullmatch(r"[\"'(_]*([A-Za-z]{3,})[.!?][\"')_]*", word)
            if not m or i - start < CLOZE_MIN_CONTEXT_WORDS:
                continue
            target, context_words = m.group(1), words[max(start, i - CLOZE_MAX_CONTEXT_WORDS):i]
            if target in {re.sub(r"^[^A-Za-z]+|[^A-Za-z]+$", "", w) for w in context_words}:
                items.append({"context": " ".join(context_words), "target": target})
                start = i + 1
    return items


def _build_cloze(log) -> dict[str, list[dict]]:
    from qsink.data.corpora import load_corpus

    items = cloze_items(load_corpus("austen", "test", log=log).text)
    return {"test": items}


def sentiment_items(ground_truth: str) -> list[dict]:
    """Tab-separated ``id, mean rating, text`` lines -> labelled items (>= 1 positive, <= -1 negative)."""
    items = []
    for n, line in enumerate(ground_truth.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise QsinkError(f"VADER ground truth line {n} is not 'id<TAB>rating<TAB>text'; "
                             "delete $QSINK_HOME/downloads/vaderSentiment-3.3.2.tar.gz and retry") from None
        if rating >= 1 or rating <= -1:
            items.append({"id": parts[0], "text": parts[2].strip(), "rating": rating, "label": int(rating >= 1)})
    return items


def fetch_vader_sdist(log=print) -> Path:
    """The vaderSentiment 3.3.2 source distribution from the package index, cached and sha256-checked."""
    dest = qsink_home() / "downloads"
    path = dest / "vaderSentiment-3.3.2.tar.gz"
    if path.is_file() and sha256_file(path) == VADER_SHA256:
        return path
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading the {VADER_SDIST} source distribution from the package index (once) ...")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "-d", tmp, VADER_SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("vaderSentiment-3.3.2.tar.gz"))
        if proc.returncode or not got:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise QsinkError(f"could not download {VADER_SDIST} with pip ({tail}); check access to the package index")
        if sha256_file(got[0]) != VADER_SHA256:
            raise QsinkError(f"the downloaded {VADER_SDIST} does not match its known sha256; not using it")
        got[0].replace(path)
    return path


def _build_sentiment(log) -> dict[str, list[dict]]:
    sdist = fetch_vader_sdist(log)
    try:
        with tarfile.open(sdist) as outer:
            inner_bytes = outer.extractfile(f"vaderSentiment-3.3.2/{VADER_MEMBER}").read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            raw = inner.extractfile(VADER_FILE).read().decode("utf-8")
    except (tarfile.TarError, KeyError, AttributeError, UnicodeDecodeError, OSError) as e:
        raise QsinkError(f"{sdist} could not be read ({e}); delete it and retry") from None
    items = sentiment_items(raw)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    pool = set(order[:FEWSHOT_POOL])
    return {"train": [items[i] for i in sorted(pool)], "test": [it for i, it in enumerate(items) if i not in pool]}


_METRIC = "    aggregation: mean\n    higher_is_better: true\n"
TASKS: Registry[LocalTask] = Registry("task")
TASKS.add("qsink_cloze", LocalTask(
    "qsink_cloze", "last-word prediction on the held-out Austen novels (LAMBADA-style)", _build_cloze,
    "task: qsink_cloze\ndataset_path: json\ndataset_kwargs:\n  data_files: {files}\ntest_split: test\n"
    "output_type: loglikelihood\ndoc_to_text: \"{{{{context}}}}\"\ndoc_to_target: \"{{{{' ' + target}}}}\"\n"
    "metric_list:\n  - metric: acc\n" + _METRIC +
    "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\nmetadata:\n  version: 2.0\n",
    version=2))
TASKS.add("qsink_sentiment", LocalTask(
    "qsink_sentiment", "binary sentiment of movie-review snippets (VADER ground truth)", _build_sentiment,
    "task: qsink_sentiment\ndataset_path: json\ndataset_kwargs:\n  data_files: {files}\ntest_split: test\n"
    "fewshot_split: train\noutput_type: multiple_choice\n"
    "doc_to_text: \"Review: {{{{text}}}}\\nSentiment:\"\ndoc_to_choice: [\"negative\", \"positive\"]\n"
    "doc_to_target: label\nmetric_list:\n  - metric: acc\n" + _METRIC + "metadata:\n  version: 1.0\n"))


def tasks_dir() -> Path:
    return qsink_home() / "tasks"


def prepare_tasks(names: list[str] | None = None, log: Callable[[str], None] = print) -> Path:
    """Build the named local tasks (default: all) into :func:`tasks_dir` and return it."""
    root = tasks_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names or TASKS.names():
        task = TASKS.get(name)
        entry = manifest.get(name)
        fresh = entry and entry.get("version") == task.version and all((root / f).is_file() and sha256_file(root / f) == h for f, h in entry["files"].items())
        if not fresh:
            splits = task.build(log)
            files = {}
            for split, items in splits.items():
                fname = f"{name}.{split}.jsonl"
                atomic_write_text(root / fname, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
                files[fname] = sha256_file(root / fname)
            entry = {"version": task.version, "files": files, "items": {s: len(v) for s, v in splits.items()}}
            manifest[name] = entry
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
            log(f"built task {name}: " + ", ".join(f"{s} {n} items" for s, n in entry["items"].items()))
        data_files = {f.split(".")[-2]: str(root / f) for f in entry["files"]}
        atomic_write_text(root / f"{name}.yaml", task.yaml.format(files=json.dumps(data_files)))
    return root


def task_items(name: str) -> dict[str, int]:
    """Item counts per split of a prepared local task."""
    manifest = json.loads((tasks_dir() / "manifest.json").read_text())
    return manifest[name]["items"]


__all__ = ["TASKS", "cloze_items", "prepare_tasks", "sentiment_items", "task_items", "tasks_dir", "sha256_text"]
