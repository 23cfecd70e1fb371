"""``qsink study``: tables with planted numbers, marked blocks filled without touching the prose."""

import math

import pandas as pd
import pytest

from qsink.errors import QsinkError
from qsink.records import RecordStore, make_record
from qsink.results.study import build_study, fill_blocks, handling_summary, split_seed, spread, study_frame
from tests.conftest import run_cli as run

# planted Δppl % per (group, seed, scheme, handling); spikes and sinks per (group, seed)
DELTAS = {
    ("bb-base", 0): {("w4a4", "none"): 4.0, ("w4a4", "hadamard"): 1.0, ("w4a4", "smoothquant"): 5.0,
                     ("w8a8-static", "none"): 2.0, ("w8a8-static", "hadamard"): 1.0, ("w8a8-static", "smoothquant"): 0.5},
    ("bb-base", 1): {("w4a4", "none"): 6.0, ("w4a4", "hadamard"): 3.0, ("w4a4", "smoothquant"): 5.0,
                     ("w8a8-static", "none"): 4.0, ("w8a8-static", "hadamard"): 1.0, ("w8a8-static", "smoothquant"): 1.7},
    ("bb-calm", 0): {("w4a4", "none"): 1.0, ("w4a4", "hadamard"): 0.5, ("w4a4", "smoothquant"): 2.0,
                     ("w8a8-static", "none"): 0.0, ("w8a8-static", "hadamard"): 0.0, ("w8a8-static", "smoothquant"): 0.0},
    ("ref", None): {("w4a4", "none"): 900.0, ("w4a4", "hadamard"): 90.0},
}
PROFILES = {("bb-base", 0): (5000.0, 1.0), ("bb-base", 1): (3000.0, 0.5), ("bb-calm", 0): (30.0, 0.5),
            ("ref", None): (20000.0, 0.9)}


def _record(model, data, scheme, handling, ppl, profile, t):
    ident = {"model": model, "scheme": scheme, "handling": handling, "data": data, "ctx": 32}
    rec = make_record(ident, {"model": {"name": model}, "data": {"data_name": data}}, {"ppl": ppl}, {"wall_s": 1.0})
    rec["metrics"].update({} if scheme == "fp" else {"fp_ppl": 10.0, "delta_ppl_pct": 100 * (ppl / 10.0 - 1)})
    rec["profile"] = {"spike_magnitude": profile[0], "sink_ratio": profile[1], "alpha_mean": profile[1] / 2,
                      "kurtosis_max": profile[0] / 100, "top1_median_max": 10.0,
                      "linear_input_ratio_max": 1e4 / profile[0], "has_massive": profile[0] > 10000}
    rec["created"] = f"2026-01-01T00:00:{t:02d}+00:00"
    return rec


def planted_records():
    recs, t = [], 0
    for (group, seed), cells in DELTAS.items():
        model = group if seed is None else f"{group}-seed{seed}"
        data = "text:test" if group == "ref" else "bb:test"
        recs.append(_record(model, data, "fp", "none", 10.0, PROFILES[(group, seed)], t))
        for (scheme, handling), d in cells.items():
            t += 1
            recs.append(_record(model, data, scheme, handling, 10.0 * (1 + d / 100), PROFILES[(group, seed)], t))
    return recs


def test_seed_names_and_spread():
    assert split_seed("bb-sandwich-seed12") == ("bb-sandwich", 12)
    assert split_seed("smollm2-135m") == ("smollm2-135m", None)
    assert split_seed("seed3") == ("seed3", None)  # nothing before the suffix: not a seed of a group
    assert spread([1.0, 3.0, 2.0]) == "+2.00 [+1.00, +3.00]"
    assert spread([0.5]) == "+0.50" and spread([float("nan")]) == "-"


def test_handling_summary_known_answers():
    df = study_frame(planted_records())
    s = handling_summary(df, "bb:test").set_index(["scheme", "handling"])
    # w4a4 over 3 models: none mean (4 + 6 + 1) / 3, hadamard (1 + 3 + 0.5) / 3
    assert s.loc[("w4a4", "none"), "mean"] == pytest.approx(11 / 3, rel=1e-9)
    assert s.loc[("w4a4", "hadamard"), "closed"] == pytest.approx(1 - 4.5 / 11, rel=1e-9)
    assert s.loc[("w4a4", "smoothquant"), "closed"] == pytest.approx(1 - 12 / 11, rel=1e-9)  # worse than none
    assert s.loc[("w4a4", "hadamard"), "better than none"] == 3
    assert s.loc[("w8a8-static", "smoothquant"), "better than none"] == 2  # the calm model ties at 0
    assert s.loc[("w4a4", "none"), "models"] == 3  # the reference text is summarised on its own
    ref = handling_summary(df, "text:test").set_index(["scheme", "handling"])
    assert ref.loc[("w4a4", "hadamard"), "closed"] == pytest.approx(0.9, rel=1e-9)


def test_blocks_have_the_planted_numbers():
    _, blocks, _ = build_study(planted_records(), "bb-base")
    variants = blocks["variants"].splitlines()
    base = next(l for l in variants if l.startswith("| bb-base |"))
    calm = next(l for l in variants if l.startswith("| bb-calm |"))
    assert "4,000 [3,000, 5,000]" in base and "| 2 |" in base  # two seeds: mean and range
    assert "0.007" in calm  # spike 30 / mean baseline 4,000 = 0.0075
    assert "+5.00 [+4.00, +6.00]" in base and "+3.00 [+2.00, +4.00]" in base  # w4a4, w8a8-static without handling
    head = next(l for l in blocks["headline"].splitlines() if l.startswith("| bb-base |"))
    assert "+1.00 [+1.00, +1.00] hadamard" in head and "+2.00 [+1.00, +3.00] hadamard" in head
    hand = next(l for l in blocks["handling"].splitlines() if l.startswith("| w4a4 |"))
    assert hand.endswith("| hadamard |") and "(59 %, 3/3)" in hand  # 1 - 4.5/11 = 0.59
    assert "ref" not in blocks["variants"] and "| ref |" in blocks["headline"]  # another text: headline only
    assert "+90" in blocks["handling-reference"] and "(90 %, 1/1)" in blocks["handling-reference"]
    rho = next(l for l in blocks["spearman"].splitlines() if l.startswith("| w4a4 |"))
    # spike ranks (3, 2, 1) against Δppl ranks (2, 3, 1): rho = 1 - 6 * 2 / (3 * 8) = 0.5, and every
    # ordering of three reaches |rho| >= 0.5, so the exact p is 1
    assert "| +0.50 (p 1.000) |" in rho
    lin = next(l for l in blocks["spearman-linear"].splitlines() if l.startswith("| w4a4 |"))
    assert "| -0.50 (p 1.000) |" in lin  # the linear-input ratio is planted in the opposite order


def test_fill_blocks_keeps_the_prose():
    text = "intro\n<!-- qsink-study:a -->\nold\n<!-- /qsink-study:a -->\nmiddle prose\n<!-- qsink-study:b -->\n<!-- /qsink-study:b -->\nend\n"
    new, names = fill_blocks(text, {"a": "| x |", "b": "B1\nB2\n"})
    assert names == ["a", "b"]
    assert new == ("intro\n<!-- qsink-study:a -->\n| x |\n<!-- /qsink-study:a -->\nmiddle prose\n"
                   "<!-- qsink-study:b -->\nB1\nB2\n<!-- /qsink-study:b -->\nend\n")
    assert fill_blocks(new, {"a": "| x |", "b": "B1\nB2\n"})[0] == new  # idempotent
    with pytest.raises(QsinkError, match="unknown study block"):
        fill_blocks(text, {"a": ""})


def test_study_command_end_to_end(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    store = RecordStore(tmp_path / "records")
    for i, r in enumerate(planted_records()):
        store.write(r, f"r{i}")
    readme = tmp_path / "results" / "README.md"
    readme.parent.mkdir()
    readme.write_text("# Study\nprose stays\n<!-- qsink-study:headline -->\n<!-- /qsink-study:headline -->\n"
                      "<!-- qsink-study:plot-handling -->\n<!-- /qsink-study:plot-handling -->\n")
    csv = tmp_path / "results" / "leaderboard.csv"
    argv = ["study", str(tmp_path / "records"), "--baseline", "bb-base", "--csv", str(csv),
            "--plots", str(tmp_path / "results" / "plots"), "--fill", str(readme)]
    assert run(argv, capsys)[0] == 0
    text = readme.read_text()
    assert "prose stays" in text and "| bb-calm |" in text and "![handling](plots/handling.png)" in text
    assert (tmp_path / "results" / "plots" / "handling.png").stat().st_size > 1000
    df = pd.read_csv(csv)
    assert len(df) == len(planted_records()) and "group" not in df.columns
    code, _, err = run(["study", str(tmp_path / "records"), "--baseline", "nope"], capsys)
    assert code == 2 and "pass --baseline" in err
    code, _, err = run(["study", str(tmp_path / "records"), "--baseline", "bb-base", "--fill", str(tmp_path / "no.md")], capsys)
    assert code == 2 and "does not exist" in err



def test_records_without_a_profile_make_a_study_with_blank_statistics(tmp_path, capsys):
    """Records of ``profile_samples: 0`` carry no profile: the tables still come, spike columns blank."""
    store = RecordStore(tmp_path / "records")
    for i, r in enumerate(planted_records()):
        r.pop("profile")
        store.write(r, f"r{i}")
    plots = tmp_path / "plots"
    code, out, err = run(["study", str(tmp_path / "records"), "--baseline", "bb-base", "--plots", str(plots)], capsys)
    assert code == 0, err
    _, blocks, _ = build_study(RecordStore(tmp_path / "records").load_all(), "bb-base")
    base = next(l for l in blocks["variants"].splitlines() if l.startswith("| bb-base |"))
    assert "+5.00 [+4.00, +6.00]" in base  # the Δppl numbers are there ...
    head = next(l for l in blocks["headline"].splitlines() if l.startswith("| bb-base |"))
    assert head.split("|")[4].strip() == "-"  # ... and the spike is blank, not made up


def test_gguf_and_imatrix_blocks_from_planted_records():
    """The GGUF block lists each (model, file type) once with the rule's type counts; the imatrix block groups the
    linears by the input they read and names the residual spike channels of the model's profile."""
    recs = planted_records()
    types = {"0.self_attn.q_proj": "Q5_0", "0.self_attn.v_proj": "Q8_0", "0.mlp.down_proj": "Q6_K", "1.mlp.down_proj": "Q4_K"}
    per_linear = {"0.self_attn.q_proj": (7, 0.9), "0.self_attn.v_proj": (7, 0.5), "1.self_attn.q_proj": (3, 0.1),
                  "0.mlp.down_proj": (11, 0.2)}
    for handling in ("none", "imatrix", "none"):  # the repeated cell is listed once
        r = _record("ref", "text:test", "gguf-q4_k_m", handling, 11.0, PROFILES[("ref", None)], 50)
        r["config"]["quant"] = {"gguf": {"ftype": "Q4_K_M", "types": types, "bits_per_weight": 5.25,
                                         "type_counts": {"Q5_0": 1, "Q8_0": 1, "Q6_K": 1, "Q4_K": 1},
                                         "fallbacks": {"0.self_attn.q_proj": "rows of 576 ..."}},
                                "handling": {"name": handling} if handling == "none" else {
                                    "name": "imatrix", "per_linear": {k: {"top1_channel": c, "top1_share": s}
                                                                      for k, (c, s) in per_linear.items()}}}
        recs.append(r)
    profile = {"schema": "qsink.profile/1", "model": {"name": "ref"}, "summary": {"spike_channels": [7, 9]}}
    _, blocks, _ = build_study(recs, "bb-base", profiles=[profile])
    rows = [l for l in blocks["gguf-types"].splitlines() if l.startswith("| ref |")]
    assert rows == ["| ref | Q4_K_M | no | 4 | Q5_0 (1), Q8_0 (1), Q6_K (1), Q4_K (1) | 1 | 5.250 |",
                    "| ref | Q4_K_M | yes | 4 | Q5_0 (1), Q8_0 (1), Q6_K (1), Q4_K (1) | 1 | 5.250 |"]
    im = {l.split(" | ")[1]: l for l in blocks["imatrix"].splitlines() if l.startswith("| ref |")}
    assert set(im) == {"attention input (q, k, v)", "FFN hidden (down)"}
    attn = im["attention input (q, k, v)"]
    assert "| 3 | 0.500 | 0.900 (0.self_attn.q_proj) | 7 (2) | 7: 2, 9: 0 |" in attn  # median of 0.9, 0.5, 0.1
    assert "| 1 | 0.200 | 0.200 (0.mlp.down_proj) | 11 (1) | - (reads no residual channels) |" in im["FFN hidden (down)"]
    none = build_study(planted_records(), "bb-base")[1]
    assert none["gguf-types"].startswith("_(no GGUF") and none["imatrix"].startswith("_(no imatrix")


def test_spinquant_block_lists_each_training_once_with_its_curve():
    """Only records that trained rotations (not those that reused them) are listed; the curve is the mean of each run
    of ten steps."""
    recs = planted_records()
    curve = [float(i) for i in range(25)]  # means of 0..9, 10..19, 20..24: 4.5, 14.5, 22
    for handling, cached in (("spinquant", False), ("spinquant+gptq", True)):
        r = _record("ref", "text:test", "w4a4", handling, 11.0, PROFILES[("ref", None)], 50)
        r["config"]["quant"] = {"handling": {"name": handling, "from_cache": cached, "steps": 25, "lr": 1.5,
                                             "loss_at_hadamard": 3.25, "loss_learned": 3.0, "loss_curve": curve,
                                             "train_s": 90.0, "max_orthogonality_error": 2e-14, "r1": "learned"}}
        recs.append(r)
    _, blocks, _ = build_study(recs, "bb-base")
    rows = [l for l in blocks["spinquant"].splitlines() if l.startswith("| ref |")]
    assert rows == ["| ref | w4a4 | 25 | 1.5 | 3.2500 | 3.0000 | 4.500 14.500 22.000 | 1.5 | 2.0e-14 | learned |"]
    assert build_study(planted_records(), "bb-base")[1]["spinquant"].startswith("_(no SpinQuant")
