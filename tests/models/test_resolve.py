"""resolve(): a GGUF is parsed once per content (remembered on disk, and in the process when the
cache cannot be written); ``verify=False`` (a sweep's status) hashes without parsing."""

import sys

import pytest

from qsink.errors import QsinkError
from qsink.models import resolve

resolve_mod = sys.modules["qsink.models.resolve"]  # the package's "resolve" attribute is the function
from tests.conftest import write_small_gguf


@pytest.fixture
def parses(tmp_path, monkeypatch):
    """A fresh $QSINK_HOME, no GGUF remembered in this process, and the list of parsed files."""
    monkeypatch.setenv("QSINK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(resolve_mod, "_PARSED_HERE", set())
    calls = []
    real = resolve_mod._check_gguf
    monkeypatch.setattr(resolve_mod, "_check_gguf", lambda p: calls.append(p) or real(p))
    return calls


def test_verify_false_hashes_without_parsing(tmp_path, parses):
    good = write_small_gguf(tmp_path / "m.gguf")
    quick = resolve(str(good), verify=False)
    assert parses == [] and not (tmp_path / "home" / "gguf-parsed.json").exists()
    assert resolve(str(good)) == quick and len(parses) == 1  # the full check, same identity
    data = good.read_bytes()
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(data[: len(data) // 2])
    assert resolve(str(trunc), verify=False).sha256 != quick.sha256  # never matches a good file's records
    with pytest.raises(QsinkError, match="corrupt or truncated GGUF"):
        resolve(str(trunc))  # what loads a model still refuses it


def test_a_gguf_is_parsed_once_per_process_when_the_memo_cannot_be_written(tmp_path, parses):
    good = write_small_gguf(tmp_path / "m.gguf")
    (tmp_path / "home" / "gguf-parsed.json").mkdir(parents=True)  # unwritable (and unreadable) memo
    for _ in range(3):
        assert resolve(str(good)).kind == "gguf"
    assert len(parses) == 1
    resolve_mod._PARSED_HERE.clear()  # a new process: parsed again, as there is no memo on disk
    resolve(str(good))
    assert len(parses) == 2
