"""Ctrl-C and SIGTERM: exit 130 / 143 with one line that says what is kept, finished records kept,
temporary files removed on the way out."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_evaluate_interrupted_in_its_second_cell_keeps_the_first(signum, code, tiny_model_dir, sample_text_file,
                                                                 tmp_path, monkeypatch, capsys):
    from qsink.evaluate import runner

    calls = []
    real = runner.perplexity

    def perplexity_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the quantized cell: the signal arrives mid-computation
            os.kill(os.getpid(), signum)
            time.sleep(5)
            pytest.fail("the signal did not stop the command")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "perplexity", perplexity_then_signal)
    out = tmp_path / "runs"
    got, _, err = run_cli(["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--ctx", "32",
                           "--max-tokens", "128", "--scheme", "w8a8", "--calib-data", f"file:{sample_text_file}",
                           "--calib", "1", "--profile-samples", "0", "--out", str(out)], capsys)
    name = signal.Signals(signum).name
    assert got == code
    assert err.strip().splitlines()[-1] == (f"interrupted: qsink evaluate stopped by {name}; finished records are "
                                            "kept; rerun the same command to finish the rest")
    assert "Traceback" not in err
    (record,) = out.glob("*.json")
    assert json.loads(record.read_text())["identity"]["scheme"] == "fp"
    assert not list(out.glob(".*")), "a temporary file was left behind"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main() puts the handlers back


def test_real_process_sigterm_during_training_exits_143_and_keeps_the_checkpoint(tmp_path):
    """A real ``qsink train`` process: SIGTERM after its first checkpoint; then --resume goes on."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("include: {}\nsteps: 100000\nckpt_every: 5\neval_every: 100000\n".format(
        Path(__file__).resolve().parents[1] / "recipes" / "bb" / "base.yaml"))
    out = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "qsink", "train", str(recipe), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "trainer_state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert (out / "trainer_state.json").exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == ("interrupted: qsink train stopped by SIGTERM; the last checkpoint is "
                                            "kept; rerun with --resume to continue")
    assert json.loads((out / "trainer_state.json").read_text())["step"] >= 5
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary checkpoint left behind"
