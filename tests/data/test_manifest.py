"""A damaged corpus cache (invalid or incomplete manifest) is one line that says how to refetch."""

import json

import pytest

from qsink.data import corpora
from qsink.errors import QsinkError
from tests.conftest import run_cli


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """An austen cache whose files are consistent, in a home of its own."""
    monkeypatch.setenv("QSINK_HOME", str(tmp_path))
    d = corpora.corpus_dir("austen")
    d.mkdir(parents=True)
    splits = {}
    for split in ("test", "train", "validation"):
        text = f"{split} text of the novels\n" * 20
        (d / f"{split}.txt").write_text(text)
        splits[split] = {"sha256": corpora.sha256_text(text), "chars": len(text), "bytes": len(text)}
    (d / "manifest.json").write_text(json.dumps({"corpus": "austen", "splits": splits}))
    return d


def test_a_consistent_cache_reads(fake_cache):
    assert corpora.load_corpus("austen", "train").text.startswith("train text")


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"splits": {"train": {"sha256": "x", "chars": 1}}}),
                                    json.dumps({"splits": "x"}), json.dumps([1, 2]), ""])
def test_a_damaged_manifest_says_to_refetch(fake_cache, damage, capsys):
    (fake_cache / "manifest.json").write_text(damage)
    with pytest.raises(QsinkError, match="run 'qsink data fetch austen --force'"):
        corpora.load_corpus("austen", "train")
    code, _, err = run_cli(["data", "list"], capsys)
    assert code == 2 and err.count("\n") == 1 and "damaged or incomplete" in err
