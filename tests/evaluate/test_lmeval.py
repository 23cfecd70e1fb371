"""The lm-eval bridge: its numbers equal a direct computation of the same log-likelihoods (known answer),
qsink's model type runs under lm-eval's own command line, and bad task names fail before any compute."""

import json
import math
import subprocess
import sys

import pytest
import torch

from qsink.errors import QsinkError
from tests.conftest import build_tiny_llama

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory):
    from qsink.models import load

    path = build_tiny_llama(tmp_path_factory.mktemp("lmeval") / "tiny", max_positions=2048, seed=3)
    model, tok = load(str(path), log=lambda m: None)
    return path, model, tok


def _loglik(model, tok, context: str, continuation: str) -> float:
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    cont = whole[len(ctx):]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_task_numbers_match_a_direct_computation(tiny_long, qsink_home):
    from qsink.data.tasks import prepare_tasks
    from qsink.evaluate.lmeval import run_tasks

    _, model, tok = tiny_long
    n = 12
    got = run_tasks(model, tok, ["qsink_sentiment", "qsink_cloze"], limit=n, batch_size=4, log=lambda m: None)
    root = prepare_tasks(log=lambda m: None)
    docs = [json.loads(line) for line in (root / "qsink_sentiment.test.jsonl").open()][:n]
    correct = 0
    for d in docs:
        ctx = f"Review: {d['text']}\nSentiment:"
        ll = [_loglik(model, tok, ctx, " " + c) for c in ("negative", "positive")]
        correct += int(max(range(2), key=lambda i: ll[i]) == d["label"])
    assert got["qsink_sentiment"]["n"] == n
    assert got["qsink_sentiment"]["acc"] == pytest.approx(correct / n, abs=1e-12)
    items = [json.loads(line) for line in (root / "qsink_cloze.test.jsonl").open()][:n]
    lls = [_loglik(model, tok, it["context"], " " + it["target"]) for it in items]
    assert got["qsink_cloze"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / n), rel=1e-4)
    assert 0.0 <= got["qsink_cloze"]["acc"] <= 1.0 and got["qsink_cloze"]["n"] == n


def test_unknown_task_is_refused_with_the_list():
    from qsink.evaluate.lmeval import check_tasks

    with pytest.raises(QsinkError, match="unknown task.*qsink_clozee.*qsink_cloze, qsink_sentiment"):
        check_tasks(["qsink_clozee"])


def test_qsink_model_type_under_lm_evals_own_cli(tiny_long, qsink_home, tmp_path):
    path, _, _ = tiny_long
    out = tmp_path / "lm-eval-out"
    cmd = [sys.executable, "-m", "qsink.evaluate.lmeval_cli", "run", "--model", "qsink", "--model_args",
           f"pretrained={path},scheme=w8a8,handling=none,calib=1,calib_data=file:{path}/tokenizer.json,ctx=64",
           "--tasks", "qsink_sentiment", "--limit", "4", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = list(out.rglob("results_*.json"))
    assert results, proc.stdout[-2000:]
    doc = json.loads(results[0].read_text())
    assert doc["results"]["qsink_sentiment"]["acc,none"] in {0.0, 0.25, 0.5, 0.75, 1.0}
    assert doc["config"]["model_args"]["scheme"] == "w8a8"


def test_standard_task_without_the_hub_fails_fast_with_one_clear_error(tiny_long, qsink_home):
    from qsink.evaluate.lmeval import hub_reachable, run_tasks

    if hub_reachable():
        pytest.skip("this machine reaches the Hugging Face hub; the offline error cannot be provoked")
    _, model, tok = tiny_long
    with pytest.raises(QsinkError, match="standard lm-eval tasks need the Hugging Face hub"):
        run_tasks(model, tok, ["arc_easy"], limit=2, log=lambda m: None)


def test_qsink_model_type_takes_the_settings_guards(tiny_long, qsink_home):
    """lm-eval's qsink model goes through EvalSettings: a test split for calibration and an unknown
    pair are refused before the model is loaded, as in ``qsink evaluate``."""
    from lm_eval.api.registry import get_model

    from qsink.evaluate.lmeval_cli import register

    register()
    qsink_lm = get_model("qsink")
    with pytest.raises(QsinkError, match="must not read a test split"):
        qsink_lm(pretrained=str(tiny_long[0]), scheme="w8a8", calib_data="austen:test")
    with pytest.raises(QsinkError, match="quantizes no activations"):
        qsink_lm(pretrained=str(tiny_long[0]), scheme="w4a16", handling="smoothquant")
    with pytest.raises(QsinkError, match=r"ctx \(--ctx\) must be a whole number"):
        qsink_lm(pretrained=str(tiny_long[0]), ctx="long")
