"""Every command with hostile values of its options: exit 2, one ``error:`` line, nothing written.

The table is the guard against a whole class of defects (negative counts meaning "everything",
invalid values accepted and results written, tracebacks after minutes of compute): each row runs
the real CLI in process from an empty working directory and checks that the command stopped
before it wrote anything, there or in ``--out``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

TEXT = "--text"


def _cases(m: str, text: str, tmp) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a phrase the error line must contain). ``OUT`` stands for the run's --out."""
    ev = ["evaluate", m, TEXT, text, "--out", "OUT"]
    me = ["measure", m, TEXT, text, "--out", "OUT", "--ctx", "32"]
    ab = ["ablate", m, "--scheme", "w8a8", "--data", f"file:{text}", "--calib-data", f"file:{text}", "--out", "OUT", "--ctx", "32", "--calib", "1"]
    ad = ["advise", m, "--data", f"file:{text}", "--calib-data", f"file:{text}", "--ctx", "32", "--out", "OUT"]
    bad_recipe = tmp / "ctx-abc.yaml"
    bad_recipe.write_text(f"models: [{m}]\nctx: abc\n")
    remote = tmp / "remote.yaml"
    remote.write_text(f"models: [{m}]\ntrust_remote_code: true\n")
    sweep_remote = tmp / "sweep-remote.yaml"
    sweep_remote.write_text(f"evaluate:\n  - models: [{m}]\n    trust_remote_code: true\n")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(f"evaluate:\n  - models: [{m}]\n")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    a_dir = tmp / "a-dir"
    a_dir.mkdir()
    return {
        "evaluate --max-tokens -1": (ev + ["--max-tokens", "-1"], "max_tokens (--max-tokens) must be at least 0"),
        "evaluate --profile-samples -2": (ev + ["--profile-samples", "-2"], "--profile-samples"),
        "evaluate --ctx -5": (ev + ["--ctx", "-5"], "--ctx"),
        "evaluate --ctx 1": (ev + ["--ctx", "1"], "--ctx"),
        "evaluate --batch-size 0": (ev + ["--batch-size", "0"], "--batch-size"),
        "evaluate --calib 0": (ev + ["--scheme", "w8a8", "--calib", "0"], "--calib"),
        "evaluate --limit 0": (ev + ["--limit", "0"], "--limit"),
        "evaluate --num-fewshot -1": (ev + ["--num-fewshot", "-1"], "--num-fewshot"),
        "evaluate --seed -1": (ev + ["--seed", "-1"], "--seed"),
        "evaluate --dtype fp8": (ev + ["--dtype", "fp8"], "unknown dtype"),
        "evaluate --device gpu": (ev + ["--device", "gpu"], "unknown device"),
        "evaluate --backend x": (ev + ["--backend", "x"], "unknown backend"),
        "evaluate --include lm_haed": (ev + ["--include", "lm_haed"], "--include takes"),
        "evaluate --calib-data test split": (ev + ["--scheme", "w8a8", "--calib-data", "austen:test"], "test split"),
        "evaluate --scheme w3a3": (ev + ["--scheme", "w3a3"], "unknown scheme"),
        "evaluate --handling nope": (ev + ["--scheme", "w8a8", "--handling", "nope"], "nope"),
        "evaluate --ctx too long": (ev + ["--ctx", "100000"], "exceeds"),  # found after loading: still no --out
        "evaluate --out a file": (["evaluate", m, TEXT, text, "--out", str(a_file)], "is a file"),
        "evaluate recipe ctx: abc": (["evaluate", "--recipe", str(bad_recipe), TEXT, text, "--out", "OUT"],
                                     "ctx (--ctx) must be a whole number, not 'abc'"),
        "evaluate recipe trust_remote_code": (["evaluate", "--recipe", str(remote), TEXT, text, "--out", "OUT"],
                                              "--trust-remote-code on the command line"),
        "evaluate recipe missing": (["evaluate", "--recipe", str(tmp / "nope.yaml"), "--out", "OUT"], "does not exist"),
        "measure --samples 0": (me + ["--samples", "0"], "--samples"),
        "measure --batch-size 0": (me + ["--batch-size", "0"], "--batch-size"),
        "measure --ctx 1": (me + ["--ctx", "1"], "--ctx"),
        "measure --top-k 0": (me + ["--top-k", "0"], "--top-k"),
        "measure --attn-windows -1": (me + ["--attn-windows", "-1"], "--attn-windows"),
        "measure --sink-eps -1": (me + ["--sink-eps", "-1"], "--sink-eps"),
        "measure --sink-eps 1.5": (me + ["--sink-eps", "1.5"], "--sink-eps"),
        "measure --massive-abs 0": (me + ["--massive-abs", "0"], "--massive-abs"),
        "measure --massive-ratio -1": (me + ["--massive-ratio", "-1"], "--massive-ratio"),
        "measure --grad-windows 0": (me + ["--gradients", "--grad-windows", "0"], "--grad-windows"),
        "measure --sample 0": (me + ["--vocab-scan", "--sample", "0"], "--sample"),
        "measure --scan-layers a": (me + ["--vocab-scan", "--scan-layers", "a,b"], "--scan-layers"),
        "measure --scan-layers 99": (me + ["--vocab-scan", "--scan-layers", "99"], "--scan-layers must lie in 1..2"),
        "measure --dtype x": (me + ["--dtype", "x"], "unknown dtype"),
        "measure --device x": (me + ["--device", "x"], "unknown device"),
        "ablate --scheme fp": (ab[:3] + ["fp"] + ab[4:], "nothing to ablate"),
        "ablate --max-tokens -1": (ab + ["--max-tokens", "-1"], "--max-tokens"),
        "ablate --calib 0": (ab + ["--calib", "0"], "--calib"),
        "ablate --batch-size 0": (ab + ["--batch-size", "0"], "--batch-size"),
        "ablate --ctx 1": (ab + ["--ctx", "1"], "--ctx"),
        "ablate --ctx too long": (ab + ["--ctx", "100000"], "exceeds"),
        "ablate --parts foo": (ab + ["--parts", "foo"], "--parts"),
        "ablate --only (": (ab + ["--only", "("], "not a regular expression"),
        "ablate --only no match": (ab + ["--only", "nothing_matches"], "matches no quantized linear"),
        "ablate --calib-data test": (ab[:7] + ["austen:test"] + ab[8:], "test split"),
        "ablate --device x": (ab + ["--device", "x"], "unknown device"),
        "leaderboard --csv a dir": (["leaderboard", "--results", str(a_dir), "--csv", str(a_dir)], "is a directory"),
        "leaderboard --results missing": (["leaderboard", "--results", str(tmp / "none")], "does not exist"),
        "study --csv a dir": (["study", str(a_dir), "--baseline", "x", "--csv", str(a_dir)], "is a directory"),
        "study --fill missing": (["study", str(a_dir), "--baseline", "x", "--fill", str(tmp / "none.md")], "does not exist"),
        "report --out a dir": (["report", "--results", str(a_dir), "--out", str(a_dir)], "is a directory"),
        "sweep --workers -3": (["sweep", str(sweep), "--workers", "-3", "--out", "OUT"], "--workers"),
        "sweep --executor x": (["sweep", str(sweep), "--executor", "x", "--out", "OUT"], "unknown executor"),
        "sweep trust_remote_code": (["sweep", str(sweep_remote), "--out", "OUT"], "--trust-remote-code on the command line"),
        "train --steps 0": (["train", "recipes/bb/base.yaml", "--steps", "0", "--out", "OUT"], "steps"),
        "train --out a file": (["train", "recipes/bb/base.yaml", "--steps", "1", "--out", str(a_file)], str(a_file)),
        "bench ppl --repeats 0": (["bench", "ppl", m, "--repeats", "0", "--out", "OUT/b.json"], "--repeats"),
        "bench measure --ctx 1": (["bench", "measure", m, "--ctx", "1", "--out", "OUT/b.json"], "--ctx"),
        "bench quant --windows 0": (["bench", "quant", m, "--windows", "0", "--out", "OUT/b.json"], "--windows"),
        "bench quant --cells bogus": (["bench", "quant", m, "--cells", "w8a8,bogus", "--out", "OUT/b.json"], "bogus"),
        "bench quant --cells fp": (["bench", "quant", m, "--cells", "fp", "--out", "OUT/b.json"], "reference"),
        "bench quant --cells bad handling": (["bench", "quant", m, "--cells", "w8a8+nope", "--out", "OUT/b.json"], "nope"),
        "bench quant --batch-size 0": (["bench", "quant", m, "--batch-size", "0", "--out", "OUT/b.json"], "--batch-size"),
        "bench matrix --max-tokens 0": (["bench", "matrix", m, "--max-tokens", "0", "--out", "OUT/b.json"], "--max-tokens"),
        "bench matrix --schemes bogus": (["bench", "matrix", m, "--schemes", "w8a8,bogus", "--out", "OUT/b.json"], "bogus"),
        "bench dtype --dtype fp64": (["bench", "dtype", m, "--dtype", "fp64", "--out", "OUT/b.json"], "fp64"),
        "bench dtype --cells bogus": (["bench", "dtype", m, "--cells", "fp,bogus", "--out", "OUT/b.json"], "bogus"),
        "bench train --steps 0": (["bench", "train", "--steps", "0", "--out", "OUT/b.json"], "--steps"),
        "bench spinquant --steps 0": (["bench", "spinquant", m, "--steps", "0", "--out", "OUT/b.json"], "--steps"),
        "bench spinquant --scheme bogus": (["bench", "spinquant", m, "--scheme", "bogus", "--out", "OUT/b.json"], "bogus"),
        "evaluate --handling-option bad": (ev + ["--scheme", "w4a4", "--handling", "spinquant", "--handling-option",
                                                 "spinquant.steps"], "HANDLING.OPTION=VALUE"),
        "evaluate --handling-option unknown": (ev + ["--scheme", "w4a4", "--handling", "spinquant", "--handling-option",
                                                     "spinquant.nope=1"], "bad options for spinquant"),
        "advise --budget 0": (ad + ["--budget", "0"], "--budget must be a positive"),
        "advise --budget abc": (ad + ["--budget", "0.1,abc"], "give KL divergences as numbers"),
        "advise --bits-max -1": (ad + ["--bits-max", "-1"], "--bits-max"),
        "advise --formats bogus": (ad + ["--formats", "int,bogus"], "unknown format family bogus"),
        "advise --act int5": (ad + ["--act", "int5"], "unknown activation format 'int5'"),
        "advise --handling nope": (ad + ["--handling", "nope"], "nope"),
        "advise --rounds 0": (ad + ["--rounds", "0"], "--rounds"),
        "advise --calib 0": (ad + ["--calib", "0"], "--calib"),
        "advise --calib-data test": (ad[:-2] + ["--calib-data", "austen:test", "--out", "OUT"], "test split"),
        "advise --recipe-out a dir": (ad + ["--budget", "0.1", "--recipe-out", str(a_dir)], "is a directory"),
        "bench advise --max-tokens 0": (["bench", "advise", m, "--max-tokens", "0", "--out", "OUT/b.json"], "--max-tokens"),
        "bench advise --budget x": (["bench", "advise", m, "--budget", "x", "--out", "OUT/b.json"], "as numbers"),
        "bench all --out a dir": (["bench", "all", m, "--out", str(a_dir)], "is a directory"),
        "data fetch unknown": (["data", "fetch", "austin"], "austen"),
    }


def _names() -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        return list(_cases("m", "t", Path(d)))


@pytest.mark.parametrize("name", _names())
def test_hostile_value_is_one_error_line_and_writes_nothing(name, tiny_model_dir, sample_text_file, tmp_path,
                                                            monkeypatch, capsys):
    repo = Path(__file__).resolve().parents[1]
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    argv, expect = _cases(str(tiny_model_dir), str(sample_text_file), fixtures)[name]
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    argv = [str(repo / a) if a.startswith("recipes/") else a.replace("OUT", str(out)) for a in argv]
    monkeypatch.chdir(work)
    before = {p: p.stat().st_mtime_ns for p in fixtures.rglob("*")}
    code, stdout, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert expect in lines[0], (name, lines[0])
    assert not out.exists(), f"{name}: --out was created"
    assert not list(work.iterdir()), f"{name}: wrote {list(work.iterdir())}"
    assert {p: p.stat().st_mtime_ns for p in fixtures.rglob("*")} == before, f"{name}: touched its inputs"


def test_table_covers_every_command():
    """A new command joins the table: each one the CLI has appears in at least one row."""
    from qsink.cli import app, bench_app

    names = " ".join(_names())
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    commands += [f"bench {c.name}" for c in bench_app.registered_commands]
    listing = {"models", "schemes"}  # take no values
    missing = [c for c in commands if c not in listing and c not in names]
    assert not missing, f"commands without a hostile-value row: {missing}"
