"""qsink.files.load_yaml: ``include:`` chains merge depth first with mappings merged key by key, and
include cycles are refused with the cycle named. qsink.files.sha256_cached: a remembered hash is used
only while the file's size and times are what they were, and a damaged memo is rebuilt."""

import hashlib
import json
import os
import re

import pytest

from qsink.errors import QsinkError
import qsink.files
from qsink.files import load_yaml, sha256_cached


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_two_file_cycle_names_the_cycle(tmp_path):
    a = write(tmp_path / "a.yaml", "include: b.yaml\nx: 1\n")
    b = write(tmp_path / "b.yaml", "include: a.yaml\ny: 2\n")
    with pytest.raises(QsinkError) as e:
        load_yaml(a)
    assert str(e.value) == f"recipe include cycle: {a.resolve()} -> {b.resolve()} -> {a.resolve()}"


def test_a_self_include_and_a_longer_cycle_through_a_subfolder(tmp_path):
    selfish = write(tmp_path / "self.yaml", "include: self.yaml\n")
    with pytest.raises(QsinkError, match="include cycle: .*self.yaml -> .*self.yaml$"):
        load_yaml(selfish)
    a = write(tmp_path / "a.yaml", "include: [ok.yaml, sub/b.yaml]\n")
    write(tmp_path / "ok.yaml", "k: 1\n")
    b = write(tmp_path / "sub" / "b.yaml", "include: c.yaml\n")  # relative to sub/
    c = write(tmp_path / "sub" / "c.yaml", "include: ../a.yaml\n")
    with pytest.raises(QsinkError) as e:
        load_yaml(a)
    assert str(e.value) == f"recipe include cycle: {a.resolve()} -> {b.resolve()} -> {c.resolve()} -> {a.resolve()}"


def test_a_three_file_chain_merges_depth_first_key_by_key(tmp_path):
    write(tmp_path / "c.yaml", """
name: c
steps: 10
lr: 0.1
tags: [c1, c2]
model: {hidden_size: 64, num_hidden_layers: 2, attn: {heads: 4, kv_heads: 2}}
only_c: true
""")
    write(tmp_path / "b.yaml", """
include: c.yaml
name: b
steps: 20
tags: [b1]
model: {num_hidden_layers: 4, attn: {heads: 8}}
only_b: x
""")
    a = write(tmp_path / "a.yaml", """
include: b.yaml
name: a
model: {attn: {kv_heads: 1}, variant: dyt}
""")
    assert load_yaml(a) == {
        "name": "a",  # the including file wins over what it includes ...
        "steps": 20,  # ... and the middle file over the deepest one
        "lr": 0.1,
        "tags": ["b1"],  # lists are replaced, not concatenated
        "model": {"hidden_size": 64, "num_hidden_layers": 4, "attn": {"heads": 8, "kv_heads": 1}, "variant": "dyt"},
        "only_c": True,
        "only_b": "x",
    }
    # the included files themselves are read unchanged (no include key left over)
    assert load_yaml(tmp_path / "b.yaml")["model"] == {"hidden_size": 64, "num_hidden_layers": 4,
                                                      "attn": {"heads": 8, "kv_heads": 2}}


def test_an_include_list_merges_in_order_and_a_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path / "base.yaml", "x: 0\nm: {p: 0, q: 0}\n")
    write(tmp_path / "l.yaml", "include: base.yaml\nx: 1\nm: {p: 1}\n")
    write(tmp_path / "r.yaml", "include: base.yaml\nx: 2\nm: {r: 2}\n")
    top = write(tmp_path / "top.yaml", "include: [l.yaml, r.yaml]\n")
    # r comes after l: its x wins; its copy of base's m.p = 0 overrides l's m.p = 1 (depth first, in order)
    assert load_yaml(top) == {"x": 2, "m": {"p": 0, "q": 0, "r": 2}}


def test_a_missing_include_is_named(tmp_path):
    a = write(tmp_path / "a.yaml", "include: nope.yaml\n")
    with pytest.raises(QsinkError, match=re.escape(f"recipe {tmp_path.resolve() / 'nope.yaml'} does not exist")):
        load_yaml(a)


@pytest.mark.parametrize("value", ["3", "[b.yaml, null]", "{b.yaml: 1}", "''"])
def test_an_include_that_is_not_file_names_is_refused(tmp_path, value):
    (tmp_path / "b.yaml").write_text("y: 2\n")
    (tmp_path / "a.yaml").write_text(f"include: {value}\nx: 1\n")
    with pytest.raises(QsinkError, match="include must be a file name or a list of file names"):
        load_yaml(tmp_path / "a.yaml")


@pytest.fixture
def counted_hashes(tmp_path, monkeypatch):
    """A fresh $QSINK_HOME and the list of files actually read by sha256_file."""
    monkeypatch.setenv("QSINK_HOME", str(tmp_path / "home"))
    calls = []
    real = qsink.files.sha256_file
    monkeypatch.setattr(qsink.files, "sha256_file", lambda p: calls.append(p) or real(p))
    return calls


def test_sha256_memo_hit_then_invalidated_by_size_and_by_mtime(tmp_path, counted_hashes):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"a" * 4096)
    first = sha256_cached(f, settle_ns=0)
    assert first == hashlib.sha256(b"a" * 4096).hexdigest()
    assert sha256_cached(f, settle_ns=0) == first and len(counted_hashes) == 1  # a hit reads nothing
    f.write_bytes(b"a" * 4097)  # another size
    assert sha256_cached(f, settle_ns=0) == hashlib.sha256(b"a" * 4097).hexdigest() and len(counted_hashes) == 2
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, another mtime
    assert sha256_cached(f, settle_ns=0) == hashlib.sha256(b"a" * 4097).hexdigest() and len(counted_hashes) == 3
    assert sha256_cached(f, settle_ns=0) and len(counted_hashes) == 3  # and remembered again


@pytest.mark.parametrize("damage", ["{\"truncated", "", "\x00\x01", "[]", "null"])
def test_a_corrupt_sha256_memo_is_ignored_and_rebuilt(tmp_path, counted_hashes, damage):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"b" * 1000)
    memo = tmp_path / "home" / "hashes.json"
    memo.parent.mkdir(parents=True)
    memo.write_text(damage)
    assert sha256_cached(f, settle_ns=0) == hashlib.sha256(b"b" * 1000).hexdigest() and len(counted_hashes) == 1
    assert list(json.loads(memo.read_text()).values()) == [hashlib.sha256(b"b" * 1000).hexdigest()]
    assert sha256_cached(f, settle_ns=0) and len(counted_hashes) == 1
