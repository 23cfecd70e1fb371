"""Linear-by-linear exemption finds a planted outlier: the one linear whose input carries it."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate.perplexity import perplexity
from qsink.quant import get_scheme, quantize_
from qsink.evaluate.ablate import linear_ablation
from qsink.quant.exempt import exempt, qlinears
from tests.conftest import SAMPLE_TEXT, make_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = make_tokenizer(add_bos=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)  # peaked logits: ppl feels the noise
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a function-preserving plant: FFN channel 5 of block 1 made 2000x louder inside
        mlp = model.model.layers[1].mlp
        mlp.up_proj.weight[5] *= 2000.0
        mlp.down_proj.weight[:, 5] /= 2000.0
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 32)
    calib = make_windows(tok, Text("c", SAMPLE_TEXT[::-1], "0"), ctx=32, max_tokens=3 * 32)
    return tok, model, windows, calib


def test_the_planted_linear_carries_the_damage(setup):
    tok, model, windows, calib = setup
    fp = perplexity(model, tok, windows).ppl
    q = copy.deepcopy(model)
    quantize_(q, get_scheme("w8a8-static"), "none", calib, tok, sqnr=False)
    result = linear_ablation(q, tok, windows, fp_ppl=fp)
    assert result["delta_ppl_pct"] > 1.0  # the loud channel makes the per-tensor scale crush the rest
    top = result["rows"][0]
    assert (top["linear"], top["part"]) == ("1.mlp.down_proj", "act")
    assert top["recovered"] > 0.9
    others = [r for r in result["rows"] if r["linear"] != "1.mlp.down_proj"]
    assert max(r["recovered"] for r in others) < 0.2
    assert len(result["rows"]) == 2 * 14  # act and weight for every linear
    assert perplexity(q, tok, windows).ppl == pytest.approx(result["ppl"], rel=1e-12)  # every exemption undone


def test_weight_only_schemes_have_no_act_rows_and_bad_parts_are_refused(setup):
    tok, model, windows, calib = setup
    q = copy.deepcopy(model)
    quantize_(q, get_scheme("w4a16"), "none", calib, tok, sqnr=False)
    fp = perplexity(model, tok, windows).ppl
    rows = linear_ablation(q, tok, windows, fp_ppl=fp)["rows"]
    assert {r["part"] for r in rows} == {"weight"} and len(rows) == 14
    with pytest.raises(QsinkError, match="unknown part"):
        linear_ablation(q, tok, windows, fp_ppl=fp, parts=("bias",))
    with pytest.raises(QsinkError, match="no quantized linear"):
        linear_ablation(model, tok, windows, fp_ppl=fp)
    rows = linear_ablation(q, tok, windows, fp_ppl=fp, only=r"^1\.mlp")["rows"]
    assert sorted(r["linear"] for r in rows) == ["1.mlp.down_proj", "1.mlp.gate_proj", "1.mlp.up_proj"]
    with pytest.raises(QsinkError, match="matches no quantized linear"):
        linear_ablation(q, tok, windows, fp_ppl=fp, only="lm_head")
    lin = qlinears(q)["0.self_attn.q_proj"]
    before = lin.weight_q.clone()
    with exempt(lin, "weight"):
        assert torch.equal(lin.weight_q, lin.weight_fp)
    assert torch.equal(lin.weight_q, before)


def test_ablate_command_stores_a_record_and_python_gives_the_same(tiny_model_dir, sample_text_file, tmp_path, capsys):
    """``qsink ablate`` writes one record of schema qsink.ablation/1 through the store; a rerun finds it
    (nothing recomputed); :func:`ablate` called from Python with the same inputs returns that record."""
    import json

    from qsink.data import load_text_file
    from qsink.evaluate.ablate import ABLATION_SCHEMA, ablate
    from qsink.evaluate.settings import EvalSettings
    from qsink.records import RecordStore
    from tests.conftest import run_cli

    out = tmp_path / "abl"
    argv = ["ablate", str(tiny_model_dir), "--scheme", "w8a8", "--data", f"file:{sample_text_file}", "--calib-data",
            f"file:{sample_text_file}", "--ctx", "32", "--max-tokens", "128", "--calib", "2", "--only", "^0\\.",
            "--out", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    (path,) = out.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == ABLATION_SCHEMA and doc["status"] == "ok" and doc["identity"]["only"] == "^0\\."
    assert {r["linear"].split(".")[0] for r in doc["rows"]} == {"0"} and len(doc["rows"]) == 2 * 7
    assert doc["delta_ppl_pct"] == pytest.approx(100 * (doc["ppl"] / doc["fp_ppl"] - 1))
    mtime = path.stat().st_mtime_ns
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and "already existed" in err and path.stat().st_mtime_ns == mtime
    text = load_text_file(sample_text_file)
    settings = EvalSettings(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", batch_size=8)
    again = ablate(str(tiny_model_dir), "w8a8", "none", text, text, settings, RecordStore(out), only="^0\\.",
                   log=lambda m: None)
    assert again.skipped and again.path == path and again.doc == doc
    fresh = ablate(str(tiny_model_dir), "w8a8", "none", text, text, settings, RecordStore(tmp_path / "other"),
                   only="^0\\.", log=lambda m: None)
    assert not fresh.skipped and fresh.doc["rows"] == doc["rows"] and fresh.doc["key"] == doc["key"]
