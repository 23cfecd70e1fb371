"""The GGUF conversion cache: verified on every use, rebuilt when damaged, safe under concurrent runs.

A tiny random Llama written as a GGUF converts in well under a second, so every test builds its own
cache in a fresh ``$QSINK_HOME`` instead of touching the real SmolLM2 conversion.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qsink.files
from qsink.files import sha256_cached
from qsink.errors import QsinkError
from qsink.models import checkpoint_dir, load, resolve
from qsink.models.gguf_cache import SOURCE_FILE, _write_cache, gguf_cache_dir
from tests.conftest import make_tokenizer, write_small_gguf

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama in float32 GGUF with a BPE tokenizer that transformers can convert."""
    import gguf

    spec = json.loads(make_tokenizer(add_bos=False).backend_tokenizer.to_str())["model"]
    vocab = sorted(spec["vocab"], key=spec["vocab"].get)
    d, ff, heads, kv_heads, n_layers = 32, 64, 4, 2, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    for add, value in [(w.add_block_count, n_layers), (w.add_context_length, 256), (w.add_embedding_length, d),
                       (w.add_feed_forward_length, ff), (w.add_head_count, heads), (w.add_head_count_kv, kv_heads),
                       (w.add_rope_dimension_count, d // heads), (w.add_layer_norm_rms_eps, 1e-5),
                       (w.add_vocab_size, len(vocab)), (w.add_tokenizer_model, "gpt2"), (w.add_token_list, vocab),
                       (w.add_token_merges, [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]),
                       (w.add_bos_token_id, 0), (w.add_eos_token_id, 1), (w.add_unk_token_id, 2)]:
        add(value)
    w.add_token_types([gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(len(vocab))])
    rng = np.random.default_rng(seed)
    shapes = {"token_embd": (len(vocab), d), "output_norm": (d,), "output": (len(vocab), d)}
    for i in range(n_layers):
        shapes.update({f"blk.{i}.attn_norm": (d,), f"blk.{i}.ffn_norm": (d,), f"blk.{i}.attn_q": (d, d),
                       f"blk.{i}.attn_k": (kv_heads * d // heads, d), f"blk.{i}.attn_v": (kv_heads * d // heads, d),
                       f"blk.{i}.attn_output": (d, d), f"blk.{i}.ffn_gate": (ff, d), f"blk.{i}.ffn_up": (ff, d),
                       f"blk.{i}.ffn_down": (d, ff)})
    for name, shape in shapes.items():
        w.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32) * 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty ``$QSINK_HOME`` for this test alone."""
    path = tmp_path / "home"
    monkeypatch.setenv("QSINK_HOME", str(path))
    return path


def logits(spec, log):
    model, _ = load(str(spec), device="cpu", log=log)
    with torch.inference_mode():
        return model(IDS).logits


def intact_cache(gguf_path: Path) -> tuple[Path, torch.Tensor]:
    """Convert ``gguf_path`` into the current home, remember every file's hash as an old cache would
    have it remembered, and return the cache directory with the logits it gives."""
    expected = logits(gguf_path, log=lambda m: None)
    cache = gguf_cache_dir(resolve(str(gguf_path)))
    for f in cache.iterdir():
        sha256_cached(f, settle_ns=0)
    return cache, expected


def assert_rebuilt(gguf_path: Path, cache: Path, expected: torch.Tensor, reason: str) -> None:
    lines = []
    assert torch.equal(logits(gguf_path, log=lines.append), expected)
    assert len(lines) == 1 and "is damaged" in lines[0] and reason in lines[0] and "rebuilding" in lines[0], lines
    files = json.loads((cache / SOURCE_FILE).read_text())["files"]
    assert all(hashlib.sha256((cache / n).read_bytes()).hexdigest() == h for n, h in files.items())
    assert not [p for p in cache.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temp dirs left


def test_cache_records_the_hash_of_every_file(home, tiny_gguf):
    cache = checkpoint_dir(resolve(str(tiny_gguf)), log=lambda m: None)
    meta = json.loads((cache / SOURCE_FILE).read_text())
    on_disk = sorted(p.name for p in cache.iterdir() if p.name != SOURCE_FILE)
    assert sorted(meta["files"]) == on_disk and "model.safetensors" in on_disk and "tokenizer.json" in on_disk
    assert meta["sha256"] == resolve(str(tiny_gguf)).sha256


def test_zeroed_bytes_with_restored_mtime_are_rebuilt(home, tiny_gguf):
    cache, expected = intact_cache(tiny_gguf)
    weights = cache / "model.safetensors"
    before = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(before.st_size // 2)
        f.write(b"\0" * 16384)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -d: only ctime betrays the edit
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert_rebuilt(tiny_gguf, cache, expected, "model.safetensors has changed")


def test_truncated_weights_are_rebuilt(home, tiny_gguf):
    cache, expected = intact_cache(tiny_gguf)
    weights = cache / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_rebuilt(tiny_gguf, cache, expected, "model.safetensors has changed")


def test_invalid_config_json_is_rebuilt(home, tiny_gguf):
    cache, expected = intact_cache(tiny_gguf)
    (cache / "config.json").write_text("{not json")
    assert_rebuilt(tiny_gguf, cache, expected, "config.json has changed")


def test_missing_tokenizer_file_is_rebuilt(home, tiny_gguf):
    cache, expected = intact_cache(tiny_gguf)
    (cache / "tokenizer.json").unlink()
    assert_rebuilt(tiny_gguf, cache, expected, "tokenizer.json is missing")


def test_cache_without_file_hashes_is_rebuilt(home, tiny_gguf):
    """A cache written by an older qsink cannot be verified, so it is rebuilt once."""
    cache, expected = intact_cache(tiny_gguf)
    meta = json.loads((cache / SOURCE_FILE).read_text())
    del meta["files"]
    (cache / SOURCE_FILE).write_text(json.dumps(meta))
    assert_rebuilt(tiny_gguf, cache, expected, "older qsink")


def test_hf_dir_without_tokenizer_keeps_its_advice(tiny_model_dir, tmp_path):
    d = shutil.copytree(tiny_model_dir, tmp_path / "no-tokenizer")
    for f in d.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(QsinkError, match="save one with tokenizer.save_pretrained"):
        load(str(d), device="cpu", log=lambda m: None)


def test_damaged_cache_that_cannot_be_rebuilt_names_the_directory(home, tmp_path):
    gguf_path = write_small_gguf(tmp_path / "unsupported.gguf")  # no Llama shapes: transformers cannot convert it
    cache = gguf_cache_dir(resolve(str(gguf_path)))
    cache.mkdir(parents=True)
    (cache / SOURCE_FILE).write_text("{}")
    with pytest.raises(QsinkError, match=f"rebuilding it failed .*; delete {cache} and rerun"):
        checkpoint_dir(resolve(str(gguf_path)), log=lambda m: None)


def test_valid_destination_found_at_the_final_rename_is_kept(home, tiny_gguf):
    """A cache that appeared while converting (e.g. from a qsink that takes no lock) is accepted."""
    resolved = resolve(str(tiny_gguf))
    cache = checkpoint_dir(resolved, log=lambda m: None)
    inode = (cache / "model.safetensors").stat().st_ino
    _write_cache(resolved, cache)
    assert (cache / "model.safetensors").stat().st_ino == inode
    assert [p.name for p in cache.parent.iterdir() if p.is_dir()] == [cache.name]


CHILD = """
import sys, time
from pathlib import Path
import transformers
from qsink.models import checkpoint_dir, resolve

slow = transformers.AutoTokenizer.from_pretrained
def from_pretrained(*a, **k):  # widen the conversion so the two runs overlap
    time.sleep(1)
    return slow(*a, **k)
transformers.AutoTokenizer.from_pretrained = from_pretrained

gguf, ready, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(ready / me).touch()
deadline = time.time() + 120
while len(list(ready.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.01)
print(checkpoint_dir(resolve(str(gguf)), log=lambda m: print("log:", m)))
"""


def test_concurrent_conversions_both_succeed(home, tiny_gguf, tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "QSINK_HOME": str(home), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_gguf), str(ready), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-2000:] for _, err, _ in results]
    cache = gguf_cache_dir(resolve(str(tiny_gguf)))
    assert {out.splitlines()[-1] for out, _, _ in results} == {str(cache)}
    logs = [line for out, _, _ in results for line in out.splitlines() if line.startswith("log:")]
    assert sum(line.startswith("log: converting") for line in logs) == 1, logs  # the other run waited, then reused it
    assert [p.name for p in (home / "models").iterdir() if p.is_dir()] == [cache.name]  # one cache, no temp dirs
    assert len(json.loads((cache / SOURCE_FILE).read_text())["files"]) >= 3


def test_stale_temp_dirs_are_swept_unless_their_lock_is_held(home, tiny_gguf):
    models = home / "models"
    own = models / f".{gguf_cache_dir(resolve(str(tiny_gguf))).name}.abcd"
    free = models / ".gguf-0123456789abcdef.efgh"
    busy = models / ".gguf-fedcba9876543210.ijkl"
    for d in (own, free, busy):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\0" * 1024)
    with open(models / ".gguf-fedcba9876543210.lock", "a") as held:  # a conversion in progress elsewhere
        fcntl.flock(held, fcntl.LOCK_EX)
        checkpoint_dir(resolve(str(tiny_gguf)), log=lambda m: None)
    assert not own.exists() and not free.exists()
    assert (busy / "model.safetensors").is_file()


def test_sha256_memo_sees_an_edit_whose_mtime_was_restored(home, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(qsink.files, "sha256_file", lambda p: calls.append(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest())
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 4096)
    first = sha256_cached(f, settle_ns=0)
    assert sha256_cached(f, settle_ns=0) == first and len(calls) == 1  # remembered
    st = f.stat()
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_cached(f, settle_ns=0) == hashlib.sha256(b"b" * 4096).hexdigest() != first
    assert len(json.loads((home / "hashes.json").read_text())) == 1  # the entry for the old contents is dropped


def test_sha256_of_a_just_changed_file_is_not_remembered(home, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(qsink.files, "sha256_file", lambda p: calls.append(p) or hashlib.sha256(Path(p).read_bytes()).hexdigest())
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 4096)
    sha256_cached(f)
    sha256_cached(f)
    assert len(calls) == 2 and not (home / "hashes.json").exists()
