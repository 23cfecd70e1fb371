"""qsink advise on a tiny model with one planted sensitive linear: the advisor raises that linear and
nothing else, the verified KL divergence meets the budget, an unreachable budget is one line and
exit 2, and the written recipe evaluates the same cell again."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.evaluate.advise import BudgetNotMet, search_path, Measured
from qsink.quant import quantize_
from qsink.quant.mixture import mixture_scheme, register_mixtures, mixture_spec
from tests.conftest import SAMPLE_TEXT, make_tokenizer, run_cli

PLANTED = "1.mlp.down_proj"


def _kld(fp, q, windows) -> float:
    """KL(p_fp || p_q) per position, written out here rather than taken from qsink."""
    with torch.no_grad():
        lp = torch.log_softmax(fp(input_ids=windows.input_ids).logits.double(), -1)
        lq = torch.log_softmax(q(input_ids=windows.input_ids).logits.double(), -1)
        return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny Llama with a loud block-1 FFN (down_proj x8), then a function-preserving plant in it: FFN
    channel 5 made 100x quieter inside (up_proj row 5 / 100) and down_proj column 5 100x louder. That
    column then sets the range of every row of down_proj, whose other weights 3- and 4-bit formats
    round away; 8 bits keep them. The function is unchanged by the plant."""
    tok = make_tokenizer(add_bos=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, initializer_range=0.02)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight *= 8.0
    before = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=2 * 32)
    ref = model(input_ids=before.input_ids).logits.detach()
    with torch.no_grad():
        mlp = model.model.layers[1].mlp
        mlp.up_proj.weight[5] /= 100.0
        mlp.down_proj.weight[:, 5] *= 100.0
    assert torch.allclose(model(input_ids=before.input_ids).logits, ref, atol=1e-5)  # function-preserving
    path = tmp_path_factory.mktemp("advise") / "planted"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path, model, tok


def _quantized(model, tok, formats: dict[str, str], base: str):
    q = copy.deepcopy(model)
    quantize_(q, mixture_scheme("t", {"weight": base, "overrides": formats}), "none", None, tok, sqnr=False)
    return q


def test_the_advisor_raises_the_planted_linear_and_nothing_else(planted, sample_text_file, tmp_path, capsys):
    path, model, tok = planted
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=8 * 32)
    everywhere = _kld(model, _quantized(model, tok, {}, "int3-g128"), windows)
    fixed = _kld(model, _quantized(model, tok, {PLANTED: "int8"}, "int3-g128"), windows)
    assert everywhere > 4 * fixed  # the plant carries most of the damage (checked independently of the advisor)
    budget = 2 * fixed
    args = ["advise", str(path), "--budget", f"{budget:.6g}", "--formats", "int", "--data", f"file:{sample_text_file}",
            "--calib-data", f"file:{sample_text_file}", "--ctx", "32", "--max-tokens", "256", "--calib", "8",
            "--task", "qsink_cloze", "--limit", "4", "--out", str(tmp_path / "r")]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    recipe = next((tmp_path / "r").glob("advised-*.yaml"))
    import yaml

    doc = yaml.safe_load(recipe.read_text())
    (name,) = doc["mixtures"]
    spec = doc["mixtures"][name]
    assert spec["weight"] == "int3-g128" and list(spec["overrides"]) == [PLANTED]
    assert spec["overrides"][PLANTED] in ("int6-g128", "int8")
    (rec_path,) = [p for p in (tmp_path / "r").glob(f"*{name}*.json")]
    rec = json.loads(rec_path.read_text())
    adv = rec["advice"]
    assert adv["verified_kld"] == rec["metrics"]["kld_mean"] and adv["verified_kld"] <= budget  # verified, not predicted
    assert adv["predicted_kld"] > 0 and adv["meets_budget"] and rec["identity"]["scheme"] == name
    assert rec["config"]["quant"]["mixture"][PLANTED] == spec["overrides"][PLANTED]
    assert 0 <= rec["metrics"]["tasks"]["qsink_cloze"]["acc"] <= 1 and "cloze" in out  # downstream, when asked
    assert "best uniform, no more bits" in out and "llama.cpp file type, nearest size" in out
    # the recipe, as written, is the same cell: evaluate finds it
    code, _, err = run_cli(["evaluate", "--recipe", str(recipe), "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and "already had a record" in err, err


def test_a_budget_no_recipe_meets_is_one_line_and_exit_2(planted, sample_text_file, tmp_path, capsys):
    path, _, _ = planted
    args = ["advise", str(path), "--budget", "1e-9", "--bits-max", "4.5", "--formats", "int",
            "--data", f"file:{sample_text_file}", "--calib-data", f"file:{sample_text_file}", "--ctx", "32",
            "--max-tokens", "128", "--calib", "2", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "no recipe within 4.5 bits per weight meets KLD <= 1e-09: the closest," in lines[0]
    assert "reaches a predicted KLD of" in lines[0] and not list((tmp_path / "r").glob("advised-*"))


def test_the_search_walks_the_convex_hulls_by_kld_removed_per_bit():
    """Known answer on a hand-made table: two linears of 100 weights, formats of 2/4/8 bits (ladder int)."""
    lin = {"0.a": 100, "0.b": 100}
    inf = {"0.a": 128 * 4, "0.b": 128 * 4}
    # a: 4 bits removes 1.0, 6 bits 0.05 more; b: 4 bits removes 0.1, 6 bits nothing more
    table = {"int3-g128": {"0.a": 1.2, "0.b": 0.2}, "int4-g128": {"0.a": 0.2, "0.b": 0.1},
             "int6-g128": {"0.a": 0.15, "0.b": 0.1}, "int8": {"0.a": 0.15, "0.b": 0.1}}
    opts = {f: Measured("none", f, 0, 0, dict(v), {"0.a": 0.0, "0.b": 0.0}) for f, v in table.items()}
    path = search_path(lin, inf, opts, "none", "int")
    steps = [p.formats for p in path]
    assert steps[0] == {"0.a": "int3-g128", "0.b": "int3-g128"}
    assert steps[1] == {"0.a": "int4-g128", "0.b": "int3-g128"}  # 1.0 removed per 100 bits first
    assert steps[2] == {"0.a": "int4-g128", "0.b": "int4-g128"}  # then 0.1 per 100 bits
    assert steps[3] == {"0.a": "int6-g128", "0.b": "int4-g128"}  # then 0.05 per 200 bits
    assert len(path) == 4  # int8 removes nothing more for either: never chosen
    assert [round(p.predicted, 6) for p in path] == [1.4, 0.4, 0.3, 0.25]
    assert path[1].bits == pytest.approx((4.25 + 3.25) / 2)


def test_a_mixture_spec_round_trips_and_a_clash_is_refused():
    from qsink.errors import QsinkError

    spec = {"weight": "q4_k", "act": None, "overrides": {"3.mlp.down_proj": "q8_0"}, "description": "d"}
    s = mixture_scheme("rt-mixture", spec)
    assert mixture_spec(s) == spec
    assert register_mixtures({"rt-mixture": spec}) == ["rt-mixture"] == register_mixtures({"rt-mixture": spec})
    with pytest.raises(QsinkError, match="exists already with another definition"):
        register_mixtures({"rt-mixture": {**spec, "weight": "q5_k"}})
    with pytest.raises(QsinkError, match="is not a linear name"):
        mixture_scheme("bad", {"weight": "q4_k", "overrides": {"down_proj": "q8_0"}})
    with pytest.raises(QsinkError, match="unknown weight format 'q9_k'"):
        mixture_scheme("bad", {"weight": "q9_k"})


def test_two_budgets_share_one_measurement_and_the_study_shows_them(planted, sample_text_file, tmp_path, capsys):
    """Each (handling, format) is measured once for both budgets (kept on disk: a rerun measures nothing), and
    ``qsink study`` tabulates and plots the advised recipes against the uniform cells they were verified beside."""
    path, _, _ = planted
    out = tmp_path / "r"
    args = ["advise", str(path), "--budget", "0.002,0.02", "--formats", "int", "--data", f"file:{sample_text_file}",
            "--calib-data", f"file:{sample_text_file}", "--ctx", "32", "--max-tokens", "256", "--calib", "8",
            "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert [ln.startswith("advise: none int3-g128: predicted") for ln in err.splitlines()].count(True) == 1
    assert len(list((out / "advise").glob("measure-*.json"))) == 4  # one per int format
    advised = [json.loads(p.read_text()) for p in out.glob("*advised-*.json")]
    assert sorted(r["advice"]["budget_kld"] for r in advised) == [0.002, 0.02]
    assert all(r["advice"]["verified_kld"] <= r["advice"]["budget_kld"] for r in advised)
    bits = {r["advice"]["budget_kld"]: r["advice"]["bits_per_weight"] for r in advised}
    assert bits[0.002] >= bits[0.02]  # a tighter budget never costs fewer bits
    code, _, err = run_cli(args, capsys)
    assert code == 0 and not [ln for ln in err.splitlines() if ln.startswith("advise: none int")]  # nothing measured again
    from qsink.results.study import advise_table, plot_advise

    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    text = advise_table(records)
    assert text.count("| planted |") == 2 and "uniform-int" in text
    plots = plot_advise(records, tmp_path / "plots")
    assert list(plots) == ["advise-planted"] and plots["advise-planted"].stat().st_size > 1000


def test_with_activations_quantized_token_keeping_competes_as_a_handling(tiny_model_dir, sample_text_file, tmp_path,
                                                                          capsys):
    args = ["advise", str(tiny_model_dir), "--budget", "0.5", "--formats", "int", "--act", "int8",
            "--data", f"file:{sample_text_file}", "--calib-data", f"file:{sample_text_file}", "--ctx", "32",
            "--max-tokens", "128", "--calib", "2", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*advised-*.json")]
    adv = rec["advice"]
    assert adv["handlings"] == ["none", "token-keep"] and adv["act"] == "int8"
    assert {m["handling"] for m in adv["measured"]} == {"none", "token-keep"} and len(adv["measured"]) == 8
    assert rec["identity"]["scheme_config"]["act"]["bits"] == 8  # the recipe quantizes every linear's input
    assert adv["verified_kld"] <= 0.5 and adv["top_act_sensitivity"]  # activations' share measured per linear
    assert any(t["kld"] > 0 for t in adv["top_act_sensitivity"])


def test_the_fewest_activation_bits_that_meet_the_budget_come_first(tiny_model_dir, sample_text_file, tmp_path, capsys):
    """--act int8,int4: 4-bit activations alone cost this model about 1e-5 of KLD (measured below, by the test),
    so a budget of 5e-6 needs 8-bit activations; the advisor tries int4 first, then takes int8."""
    from qsink.models import load
    from qsink.quant.schemes import Scheme
    from qsink.quant.mixture import act_format

    model, tok = load(str(tiny_model_dir), log=lambda m: None)
    windows = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 32)
    q = copy.deepcopy(model)
    quantize_(q, Scheme("a4", "a4", None, act_format("int4")), "none", None, tok, sqnr=False)
    assert _kld(model, q, windows) > 2 * 5e-6  # int4 activations alone miss the budget
    args = ["advise", str(tiny_model_dir), "--budget", "5e-6", "--formats", "int", "--act", "int8,int4",
            "--data", f"file:{sample_text_file}", "--calib-data", f"file:{sample_text_file}", "--ctx", "32",
            "--max-tokens", "128", "--calib", "2", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "with int4 activations no recipe meets the budget; trying int8 activations" in err
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*advised-*.json")]
    assert rec["advice"]["act"] == "int8" and rec["advice"]["acts_considered"] == ["int4", "int8"]
    assert rec["advice"]["verified_kld"] <= 5e-6
