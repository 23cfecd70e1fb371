"""The command line end to end on a tiny real checkpoint, and one clear line for each bad input."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import torch
import pytest

from tests.conftest import run_cli


def cell_records(out):
    """The evaluation records in ``out`` (profiles that evaluate attaches live beside them)."""
    return [p for p in out.glob("*.json") if "__profile__" not in p.name]


run = run_cli


def test_evaluate_writes_a_record_and_resumes(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32", "--max-tokens", "256", "--out", str(out)]
    code, stdout, _ = run(args, capsys)
    assert code == 0
    records = cell_records(out)
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["schema"] == "qsink.record/1" and rec["status"] == "ok"
    assert rec["config"]["data"]["data_name"] == "file:sample.txt"
    assert rec["config"]["data"]["ctx"] == 32 and rec["config"]["data"]["n_windows"] == 8
    assert rec["config"]["model"]["sha256"] and rec["config"]["data"]["data_sha256"]
    assert rec["env"]["torch"] and "git_commit" in rec["env"]
    assert rec["metrics"]["ppl"] > 1 and rec["timing"]["tokens_per_s"] > 0
    mtime = records[0].stat().st_mtime_ns

    code, stdout, stderr = run(args, capsys)  # resume: the cell is found, not recomputed
    assert code == 0 and "1 cell(s) already had a record" in stderr
    assert records[0].stat().st_mtime_ns == mtime
    code, _, _ = run(args + ["--force"], capsys)
    assert code == 0 and records[0].stat().st_mtime_ns != mtime

    code, _, _ = run(args[:-4] + ["--ctx", "16", "--out", str(out)], capsys)  # a new cell
    assert code == 0 and len(cell_records(out)) == 2

    csv = tmp_path / "lb.csv"
    code, stdout, _ = run(["leaderboard", "--results", str(out), "--csv", str(csv)], capsys)
    assert code == 0
    df = pd.read_csv(csv)
    assert len(df) == 2
    assert {"model", "scheme", "data", "ctx", "ppl", "bpb", "config.model.sha256", "env.torch"} <= set(df.columns)
    assert sorted(df["ctx"]) == [16, 32]
    assert list(df["ppl"]) == sorted(df["ppl"])


def test_listing_commands(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "smollm2-135m" in out and "Q4_1" in out
    code, out, _ = run(["schemes"], capsys)
    assert code == 0 and "w8a8-static" in out and "nvfp4" in out and "smoothquant" in out and "token-keep" in out
    code, out, _ = run(["data", "list"], capsys)
    assert code == 0 and "r-cran-janeaustenr" in out


def _bad_inputs(tmp_path, tiny_model_dir):
    """(name, argv) pairs that must each fail with one line and exit code 2."""
    from tests.conftest import write_small_gguf

    text = tmp_path / "ok.txt"
    text.write_text("word " * 500)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café ".encode("latin-1") * 100)
    noconfig = tmp_path / "noconfig"
    noconfig.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    st = corrupt / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-64])
    gguf = write_small_gguf(tmp_path / "x.gguf")
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(gguf.read_bytes()[:2000])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    m, t = str(tiny_model_dir), ["--text", str(text)]
    return {
        "missing path": (["evaluate", str(tmp_path / "nope")] + t, "neither an existing path"),
        "no config.json": (["evaluate", str(noconfig)] + t, "no config.json"),
        "corrupt safetensors": (["evaluate", str(corrupt)] + t, "truncated safetensors"),
        "truncated gguf": (["evaluate", str(trunc)] + t, "truncated GGUF"),
        "unknown built-in": (["evaluate", "smollm3-135m"] + t, "did you mean 'smollm2-135m'"),
        "empty text": (["evaluate", m, "--text", str(empty)], "is empty"),
        "non-utf8 text": (["evaluate", m, "--text", str(latin)], "is not UTF-8"),
        "ctx too long": (["evaluate", m, "--ctx", "100000"] + t, "exceeds tiny-llama's maximum of 256"),
        "unwritable results": (["evaluate", m, "--out", str(blocker / "sub")] + t, "is not writable"),
        "unknown scheme": (["evaluate", m, "--scheme", "w3a3"] + t, "unknown scheme 'w3a3'"),
        "unknown corpus": (["evaluate", m, "--data", "austin"], "Did you mean 'austen'"),
        "leaderboard without records": (["leaderboard", "--results", str(tmp_path / "none")], "does not exist"),
    }


def test_each_bad_input_is_one_clear_line(tiny_model_dir, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, tiny_model_dir)
    out = tmp_path / "results"
    for name, (argv, expect) in cases.items():
        if "--out" not in argv and argv[0] == "evaluate":
            argv = argv + ["--out", str(out)]
        code, _, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert expect in lines[0], (name, lines[0])
        assert "Traceback" not in err
    assert not list(out.glob("*.json")), "a failed run left a record behind"


def test_real_entry_point_prints_no_traceback(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "qsink", "evaluate", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_measure_writes_profile_and_plots(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["measure", str(tiny_model_dir), "--text", str(sample_text_file), "--samples", "3", "--ctx", "32", "--out", str(out)]
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    (path,) = out.glob("*__profile__*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == "qsink.profile/1" and doc["n_windows"] == 3 and doc["identity"]["samples"] == 3
    assert {"spike_magnitude", "top1_median_max", "kurtosis_max", "sink_ratio", "spike_tokens"} <= set(doc["summary"])
    pngs = sorted(p.name.split("-")[-1] for p in out.glob(f"{path.stem}-*.png"))
    assert pngs == ["channels.png", "layers.png", "sinks.png"]
    assert "spike magnitude" in stdout and "sink ratio" in stdout
    code, _, stderr = run(args, capsys)
    assert code == 0 and "already existed" in stderr
    # profiles are not leaderboard rows
    code, _, err = run(["leaderboard", "--results", str(out)], capsys)
    assert code == 2 and "no records" in err


def test_measure_bad_inputs(tiny_model_dir, sample_text_file, tmp_path, capsys):
    code, _, err = run(["measure", str(tmp_path / "nope"), "--text", str(sample_text_file)], capsys)
    assert code == 2 and err.startswith("error: model")
    code, _, err = run(["measure", str(tiny_model_dir), "--text", str(sample_text_file), "--samples", "0"], capsys)
    assert code == 2 and "--samples" in err


def test_matrix_of_schemes_and_handling(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "matrix"
    args = ["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32", "--max-tokens", "128",
            "--scheme", "w8a8,w4a4", "--handling", "none,hadamard,llm-int8", "--calib", "2", "--calib-data", "austen:validation",
            "--sqnr", "--out", str(out)]
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    assert "skipping w4a4+llm-int8" in stderr
    recs = [json.loads(p.read_text()) for p in cell_records(out)]
    cells = sorted((r["identity"]["scheme"], r["identity"]["handling"]) for r in recs)
    assert cells == [("fp", "none"), ("w4a4", "hadamard"), ("w4a4", "none"), ("w8a8", "hadamard"), ("w8a8", "llm-int8"), ("w8a8", "none")]
    fp = next(r for r in recs if r["identity"]["scheme"] == "fp")
    for r in recs:
        assert r["status"] == "ok"
        if r["identity"]["scheme"] != "fp":
            m = r["metrics"]
            assert m["fp_ppl"] == fp["metrics"]["ppl"]
            assert m["delta_ppl"] == pytest.approx(m["ppl"] - fp["metrics"]["ppl"])
            assert m["sqnr_db_mean"] is not None and len(r["config"]["quant"]["sqnr_db"]) == 14
            assert "austen:validation" in r["config"]["quant"]["calibration"]["data"]
    csv = tmp_path / "m.csv"
    code, _, _ = run(["leaderboard", "--results", str(out), "--csv", str(csv)], capsys)
    df = pd.read_csv(csv)
    assert len(df) == 6 and {"handling", "delta_ppl_pct", "sqnr_db_mean"} <= set(df.columns)
    assert not any(c.startswith("config.quant.sqnr_db.") for c in df.columns)


def test_incompatible_single_pair_and_test_calibration_are_refused(tiny_model_dir, sample_text_file, tmp_path, capsys):
    base = ["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--out", str(tmp_path / "x")]
    code, _, err = run(base + ["--scheme", "w4a16", "--handling", "smoothquant"], capsys)
    assert code == 2 and "quantizes no activations" in err
    code, _, err = run(base + ["--scheme", "w8a8", "--calib-data", "austen:test"], capsys)
    assert code == 2 and "must not read a test split" in err
    code, _, err = run(base + ["--scheme", "w8a8", "--backend", "bnb", "--handling", "hadamard"], capsys)
    assert code == 2 and "bnb backend implements" in err
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("*.json"))


def test_a_failing_model_is_recorded_and_the_matrix_goes_on(tiny_model_dir, sample_text_file, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    key = next(k for k in tensors if "down_proj" in k)
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "runs"
    code, _, err = run(["evaluate", str(broken), str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32",
                        "--max-tokens", "64", "--out", str(out)], capsys)
    assert code == 0
    recs = {json.loads(p.read_text())["config"]["model"]["name"]: json.loads(p.read_text()) for p in cell_records(out)}
    assert recs["broken"]["status"] == "failed" and "non-finite" in recs["broken"]["error"]
    assert recs["tiny-llama"]["status"] == "ok"
    assert "broken [fp] failed" in err


def test_evaluate_recipe_with_tasks_profile_leaderboard_and_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rec"
    recipe = tmp_path / "matrix.yaml"
    recipe.write_text(f"models: [{tiny_model_dir}]\nschemes: w8a8\nhandling: [none]\ntasks: [qsink_sentiment]\n"
                      f"limit: 8\ndata: austen:validation\nctx: 32\nmax_tokens: 124\ncalib: 1\ncalib_data: austen:train\n"
                      f"profile_samples: 2\nout: {out}\n")
    code, stdout, stderr = run(["evaluate", "--recipe", str(recipe), "--limit", "3"], capsys)  # the command line wins
    assert code == 0, stderr
    recs = {r["identity"]["scheme"]: r for r in (json.loads(p.read_text()) for p in cell_records(out))}
    assert set(recs) == {"fp", "w8a8"}
    (profile_path,) = out.glob("*__profile__*.json")
    summary = json.loads(profile_path.read_text())["summary"]
    for r in recs.values():
        assert r["metrics"]["tasks"]["qsink_sentiment"]["n"] == 3
        assert r["profile"]["spike_magnitude"] == summary["spike_magnitude"]
        assert r["profile"]["sink_ratio"] == summary["sink_ratio"] and r["profile"]["samples"] == 2
    w8 = recs["w8a8"]["metrics"]["tasks"]["qsink_sentiment"]
    assert w8["delta_acc"] == pytest.approx(w8["acc"] - recs["fp"]["metrics"]["tasks"]["qsink_sentiment"]["acc"])

    csv = tmp_path / "lb.csv"
    code, stdout, _ = run(["leaderboard", "--results", str(out), "--csv", str(csv), "--group-by", "scheme",
                           "--sort", "delta_ppl_pct", "--plots", str(tmp_path / "plots")], capsys)
    assert code == 0 and "Spearman" in stdout and "too few" in stdout
    df = pd.read_csv(csv)
    assert {"acc.sentiment", "delta_acc.sentiment", "spike_magnitude", "sink_ratio", "kurtosis_max"} <= set(df.columns)
    assert (tmp_path / "plots" / "delta-vs-spike.png").stat().st_size > 0
    assert (tmp_path / "plots" / "heatmap.png").stat().st_size > 0
    assert {"kld_mean", "same_top", "dp_rms"} <= set(df.columns)
    assert (df[df["scheme"] == "w8a8"]["kld_mean"] > 0).all() and df[df["scheme"] == "fp"]["kld_mean"].isna().all(), df[["scheme", "kld_mean"]]
    for png in ("kld.png", "kld-by-kind.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 0
    code, _, err = run(["leaderboard", "--results", str(out), "--group-by", "nrom"], capsys)
    assert code == 2 and "no column(s) nrom" in err

    code, stdout, _ = run(["report", "--results", str(out), "--out", str(tmp_path / "rep" / "report.md")], capsys)
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Quantized cells" in md and "## Does the spike predict the damage?" in md and "acc sentiment" in md
    assert (tmp_path / "rep" / "report-delta-vs-spike.png").is_file()
    assert "KLD" in md and "## Where the damage lands: KLD by kind of position" in md
    assert (tmp_path / "rep" / "report-kld-by-kind.png").is_file() and (tmp_path / "rep" / "report-kld.png").is_file()

    (tmp_path / "bad.yaml").write_text("models: [x]\nschemez: [w8a8]\n")
    code, _, err = run(["evaluate", "--recipe", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "unknown key(s) schemez" in err
    code, _, err = run(["evaluate", str(tiny_model_dir), "--task", "qsink_clozee"], capsys)
    assert code == 2 and "unknown task(s) qsink_clozee" in err


def test_killed_matrix_keeps_only_complete_records_and_the_rerun_finishes(tiny_model_dir, sample_text_file, tmp_path, capsys):
    """kill -9 in the middle of a matrix: what is on disk is whole, and the same command completes it."""
    import signal
    import time

    out = tmp_path / "killed"
    args = ["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32", "--max-tokens", "2000",
            "--scheme", "w8a8,w4a4,w4a8,nvfp4,mxfp4", "--handling", "none,hadamard", "--calib", "1",
            "--calib-data", "austen:validation", "--profile-samples", "0", "--batch-size", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "qsink", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(cell_records(out) if out.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cell_records(out)
    assert 2 <= len(done) < 11, "the kill came too late to test anything"
    for p in done:
        assert json.loads(p.read_text())["status"] == "ok"  # every file on disk is a whole record
    code, _, stderr = run(args, capsys)
    assert code == 0, stderr
    assert f"{len(done)} cell(s) already had a record" in stderr
    assert len(cell_records(out)) == 11  # fp + 5 schemes x 2 handlings


def test_measure_attribution_is_added_to_a_cached_profile(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "attr"
    args = ["measure", str(tiny_model_dir), "--text", str(sample_text_file), "--samples", "2", "--ctx", "32", "--out", str(out)]
    code, _, _ = run(args, capsys)
    assert code == 0
    (path,) = out.glob("*__profile__*.json")
    assert "attribution" not in json.loads(path.read_text())
    code, stdout, stderr = run(args + ["--attribution"], capsys)
    assert code == 0, stderr
    (path2,) = out.glob("*__profile__*.json")
    assert path2 == path  # the same record, now with the attribution
    a = json.loads(path.read_text())["attribution"]
    assert a["channels"] and {"injector", "remover", "steps"} <= set(a["channels"][0])
    assert "step-up attribution" in stdout


def test_measure_vocab_scan(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "scan"
    args = ["measure", str(tiny_model_dir), "--text", str(sample_text_file), "--samples", "2", "--ctx", "32", "--out", str(out),
            "--vocab-scan", "--sample", "40", "--scan-layers", "1,2"]
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    (path,) = out.glob("*__profile__*.json")
    v = json.loads(path.read_text())["vocab_scan"]
    assert v["n_scanned"] == 40 and v["layers"] == [1, 2] and v["n_spike"] + v["n_exceptions"] == 40
    assert "vocabulary scan (40 of" in stdout
    code, _, stderr = run(args, capsys)
    assert code == 0 and "already existed" in stderr
    code, _, err = run(args[:-1] + ["9"], capsys)
    assert code == 2 and "--scan-layers must lie in 1..2" in err


def test_measure_gradients(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "grad"
    args = ["measure", str(tiny_model_dir), "--text", str(sample_text_file), "--samples", "2", "--ctx", "32", "--out", str(out),
            "--gradients", "--grad-windows", "2"]
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    (path,) = out.glob("*__profile__*.json")
    g = json.loads(path.read_text())["gradient_sinks"]
    assert g["n_windows"] == 2 and len(g["v"]["r_gs"]) == 2 and "gradient-sink ratio" in stdout


def test_report_shows_the_seed_paper_analyses(tiny_model_dir, sample_text_file, tmp_path, capsys):
    out = tmp_path / "all"
    base = [str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32", "--out", str(out)]
    code, _, stderr = run(["measure", *base, "--samples", "2", "--attribution", "--gradients", "--grad-windows", "2",
                           "--vocab-scan", "--sample", "30", "--scan-layers", "1"], capsys)
    assert code == 0, stderr
    (profile,) = out.glob("*__profile__*.json")
    for suffix in ("gradients", "attribution", "vocab"):
        assert (out / f"{profile.stem}-{suffix}.png").stat().st_size > 0
    code, _, stderr = run(["evaluate", *base, "--max-tokens", "62", "--profile-samples", "0"], capsys)
    assert code == 0, stderr
    code, _, _ = run(["report", "--results", str(out), "--out", str(tmp_path / "r" / "report.md")], capsys)
    assert code == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Seed-paper analyses" in md and "Step-up attribution" in md
    assert "Position-0 vocabulary scan" in md and "Gradient-sink ratio" in md
    for suffix in ("attribution", "vocab", "gradients"):
        assert (tmp_path / "r" / f"report-tiny-llama-{suffix}.png").is_file()
