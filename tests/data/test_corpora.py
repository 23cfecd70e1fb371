"""The real fetch-and-extract path: Debian packages downloaded, unpacked and read by qsink."""

import pytest

from qsink.data import corpora
from qsink.errors import QsinkError

pytestmark = pytest.mark.network


def test_austen_splits_are_the_documented_novels():
    corpora.fetch("austen", log=lambda m: None)
    test = corpora.load_corpus("austen", "test")
    train = corpora.load_corpus("austen", "train")
    val = corpora.load_corpus("austen", "validation")
    assert test.name == "austen:test"
    assert test.text.startswith("Persuasion")
    assert "NORTHANGER ABBEY" in test.text and "Anne Elliot" in test.text
    assert "Emma Woodhouse" not in test.text and "Elizabeth Bennet" not in test.text
    assert "Emma Woodhouse" in train.text and "Catherine Morland" not in train.text
    assert "Anne Elliot" not in val.text
    assert len(train.text) > 5 * len(val.text)
    # the six novels hold about 4 million characters in all
    assert 3.5e6 < len(test.text) + len(train.text) + len(val.text) < 4.5e6


def test_tampered_cache_is_detected(qsink_home):
    corpora.fetch("austen", log=lambda m: None)
    path = corpora.corpus_dir("austen") / "validation.txt"
    original = path.read_text()
    try:
        path.write_text(original + "tampered")
        with pytest.raises(QsinkError, match="does not match its recorded sha256"):
            corpora.load_corpus("austen", "validation")
    finally:
        path.write_text(original)
    assert corpora.load_corpus("austen", "validation").text == original


@pytest.mark.parametrize("name, phrase", [("web", "In the beginning, God created the heavens and the earth."),
                                          ("tdavid", "Blessed is the man")])
def test_sword_corpora(name, phrase):
    text = corpora.load_corpus(name, log=lambda m: None)
    assert phrase in text.text
    assert "<w " not in text.text and "lemma=" not in text.text and "<note" not in text.text
    assert len(text.text) > 3e6


def test_unknown_names_and_splits():
    with pytest.raises(QsinkError, match="did you mean 'austen'|Did you mean 'austen'"):
        corpora.load_corpus("austin")
    with pytest.raises(QsinkError, match="has no split 'dev'"):
        corpora.load_corpus("austen", "dev")
