import pytest

from qsink.data import resolve, text
from qsink.errors import QsinkError


def test_text_file_round_trip(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Hello, world — ünïcode.", encoding="utf-8")
    t = text.load_text_file(p)
    assert t.name == "file:t.txt" and t.text == "Hello, world — ünïcode."
    assert len(t.sha256) == 64


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"  \n\t", "is empty"),
                                            (b"caf\xe9 latin-1", "is not UTF-8")])
def test_bad_text_files(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(QsinkError, match=match):
        text.load_text_file(p)


def test_missing_text_file(tmp_path):
    with pytest.raises(QsinkError, match="does not exist"):
        text.load_text_file(tmp_path / "nope.txt")


def test_data_and_text_are_exclusive(tmp_path):
    with pytest.raises(QsinkError, match="not both"):
        resolve.resolve_data("austen", str(tmp_path / "x.txt"))


def test_hf_data_without_the_datasets_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(QsinkError, match="needs the 'datasets' package"):
        resolve.resolve_data("hf:wikitext:wikitext-2-raw-v1", None)
