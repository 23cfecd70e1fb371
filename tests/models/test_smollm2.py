"""The real built-in model: GGUF conversion fidelity and perplexity against an independent computation."""

import json
import math

import pytest
import torch

from qsink.cli import main
from qsink.data import load_corpus
from qsink.models import BUILTINS, checkpoint_dir, resolve

pytestmark = pytest.mark.slow


def test_cached_safetensors_copy_has_identical_logits(smollm2):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    gguf = BUILTINS.get("smollm2-135m").locate()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("It is a truth universally acknowledged, that a single man", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    cached = checkpoint_dir(resolve("smollm2-135m"))
    assert json.loads((cached / "qsink-source.json").read_text())["sha256"] == resolve("smollm2-135m").sha256
    assert not list(cached.glob("*.gguf")) and list(cached.glob("*.safetensors"))


def test_evaluate_agrees_with_independent_computation(smollm2, tmp_path, capsys):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "smollm2-135m", "--ctx", "256", "--max-tokens", "1024", "--profile-samples", "0", "--out", str(out)])
        raise SystemExit(0)
    assert e.value.code == 0
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["config"]["data"]["data_name"] == "austen:test"
    assert rec["config"]["model"]["n_layers"] == 30

    # independently: tokenize the test split, cut 4 windows of 256, sum transformers' own loss
    model, tok = smollm2
    text = load_corpus("austen", "test").text
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] != tok.bos_token_id and tok("a").input_ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS
    windows = torch.tensor(ids[:1024]).view(4, 256)
    nll = 0.0
    with torch.inference_mode():
        for w in windows:
            nll += float(model(input_ids=w[None], labels=w[None]).loss) * 255
    expected_ppl = math.exp(nll / (4 * 255))
    assert rec["metrics"]["n_scored"] == 4 * 255
    assert rec["metrics"]["ppl"] == pytest.approx(expected_ppl, rel=1e-4)
