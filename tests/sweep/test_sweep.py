"""qsink sweep: the job graph, the local executor (inline and process pool), crash recovery, and Ray for real."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsink.errors import QsinkError
from qsink.sweep import execute, load_sweep, order, status


def write_sweep(tmp_path: Path, text_file: Path, seeds=(0,), schemes="[w8a8, w4a16]", handling="[none, hadamard]",
                steps: int = 6) -> Path:
    (tmp_path / "tiny.yaml").write_text(
        f"name: tiny\ndata: ['file:{text_file}']\nval_data: 'file:{text_file}'\nvocab_size: 300\nseq_len: 32\n"
        f"batch_size: 4\nsteps: {steps}\nwarmup: 1\neval_every: {steps}\nckpt_every: 2\neval_batches: 1\nthreads: 1\n"
        "model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: t\nout: {tmp_path / 'out'}\ntrain:\n  - recipe: tiny.yaml\n    seeds: {list(seeds)}\n"
        f"evaluate:\n  - models: [trained]\n    data: 'file:{text_file}'\n    calib_data: 'file:{text_file}'\n"
        f"    schemes: {schemes}\n    handling: {handling}\n    ctx: 32\n    max_tokens: 256\n    calib: 1\n"
        "    profile_samples: 2\n    batch_size: 2\nresources:\n  evaluate: {num_cpus: 1}\n")
    return sweep


def test_plan_dependencies_and_dropped_pairs(sample_text_file, tmp_path):
    sw = load_sweep(write_sweep(tmp_path, sample_text_file, seeds=(0, 1), handling="[none, smoothquant]"))
    keys = [j.key for j in sw.jobs]
    # w4a16 quantizes no activations: smoothquant is dropped for it with the reason; w8a8 keeps both
    assert any(d.startswith("w4a16+smoothquant") for d in sw.dropped)
    per_model = ["fp", "w8a8", "w8a8+smoothquant", "w4a16"]
    # each training job is followed by the cells that need it
    assert keys == [k for s in (0, 1) for k in [f"train:tiny-seed{s}"] + [
        f"eval:{tmp_path / 'out' / 'train' / f'tiny-seed{s}'}:{c}" for c in per_model]]
    fp = sw.job(f"eval:{tmp_path / 'out' / 'train' / 'tiny-seed1'}:fp")
    q = sw.job(f"eval:{tmp_path / 'out' / 'train' / 'tiny-seed1'}:w8a8")
    assert fp.deps == ("train:tiny-seed1",) and q.deps == ("train:tiny-seed1", fp.key)
    ordered = [j.key for j in order(list(reversed(sw.jobs)))]
    assert all(ordered.index(d) < ordered.index(j.key) for j in sw.jobs for d in j.deps)  # dependencies first
    assert [j.key for j in order(sw.jobs)] == keys  # and the given order wherever they allow it
    assert sw.records == tmp_path / "out" / "records"
    assert q.resources == {"num_cpus": 1, "num_gpus": 0}
    assert not any(status(sw).values())  # nothing trained yet


def test_bad_sweeps_say_what_to_fix(sample_text_file, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrian: []\n")
    with pytest.raises(QsinkError, match="unknown key.*trian"):
        load_sweep(p)
    p.write_text("name: x\ntrain:\n  - recipe: missing.yaml\n")
    with pytest.raises(QsinkError, match="missing.yaml not found"):
        load_sweep(p)
    p.write_text("name: x\n")
    with pytest.raises(QsinkError, match="nothing to do"):
        load_sweep(p)
    sw = load_sweep(write_sweep(tmp_path, sample_text_file))
    with pytest.raises(QsinkError, match="unknown executor"):
        execute(sw, executor="slurm")


def test_local_sweep_then_rerun_runs_nothing(sample_text_file, tmp_path):
    sw = load_sweep(write_sweep(tmp_path, sample_text_file, schemes="[w8a8]", handling="[none]"))
    first = execute(sw)
    assert [r["status"] for r in first] == ["done"] * 3, first
    records = sorted((tmp_path / "out" / "records").glob("*.json"))
    cells = [json.loads(p.read_text()) for p in records]
    q = next(c for c in cells if c.get("identity", {}).get("scheme") == "w8a8")
    assert q["status"] == "ok" and q["metrics"]["delta_ppl_pct"] is not None  # Δ against the fp dependency
    mtimes = {p: p.stat().st_mtime_ns for p in records}
    again = execute(load_sweep(tmp_path / "sweep.yaml"))
    assert [r["status"] for r in again] == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in records} == mtimes
    assert all(status(sw).values())
    journal = [json.loads(l) for l in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert [e["status"] for e in journal] == ["done"] * 3 + ["skipped"] * 3  # both invocations, in order
    assert [e["kind"] for e in journal[:3]] == ["train", "eval", "eval"]
    assert journal[0]["wall_s"] > journal[3]["wall_s"] >= 0 and journal[0]["pid"] == os.getpid()


def test_failed_dependency_blocks_its_cells(sample_text_file, tmp_path):
    sweep = write_sweep(tmp_path, sample_text_file, schemes="[w8a8]", handling="[none]")
    (tmp_path / "tiny.yaml").write_text((tmp_path / "tiny.yaml").read_text().replace(f"file:{sample_text_file}'\nvocab",
                                                                                      f"file:{tmp_path}/gone.txt'\nvocab"))
    res = execute(load_sweep(sweep))
    assert res[0]["status"] == "failed" and "gone.txt" in res[0]["detail"]
    assert [r["status"] for r in res[1:]] == ["blocked", "blocked"]


def test_kill_minus_9_of_the_driver_then_rerun(sample_text_file, tmp_path):
    """A real crash: the sweep process is SIGKILLed once the first record is on disk; the rerun
    keeps every finished output and runs only the rest."""
    sweep = write_sweep(tmp_path, sample_text_file, seeds=(0, 1), schemes="[w8a8]", handling="[none]", steps=40)
    proc = subprocess.Popen([sys.executable, "-m", "qsink", "sweep", str(sweep), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    records = tmp_path / "out" / "records"
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.name.endswith(".json") for p in records.glob("*__*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert before, "the sweep wrote nothing before the deadline"
    assert not list(records.glob("*.tmp*"))  # only whole records
    sw = load_sweep(sweep)
    res = execute(sw)
    assert all(r["status"] in ("done", "skipped") for r in res), res
    assert "skipped" in [r["status"] for r in res] and "done" in [r["status"] for r in res]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing finished was recomputed
    assert all(status(sw).values())


def test_process_pool_executor(sample_text_file, tmp_path):
    sw = load_sweep(write_sweep(tmp_path, sample_text_file, seeds=(0, 1), schemes="[w8a8]", handling="[none]"))
    res = execute(sw, workers=2)
    assert [r["status"] for r in res] == ["done"] * 6, res
    assert len({r["pid"] for r in res}) >= 2 and os.getpid() not in {r["pid"] for r in res}


def test_ray_executor_on_a_local_cluster(sample_text_file, tmp_path):
    ray = pytest.importorskip("ray")
    sw = load_sweep(write_sweep(tmp_path, sample_text_file, seeds=(0,), schemes="[w8a8]", handling="[none]"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"QSINK_HOME": os.environ["QSINK_HOME"]}})
    try:
        res = execute(sw, executor="ray")
        assert [r["status"] for r in res] == ["done"] * 3, res
        assert os.getpid() not in {r["pid"] for r in res}  # ran in Ray worker processes
        again = execute(load_sweep(tmp_path / "sweep.yaml"), executor="ray")
        assert [r["status"] for r in again] == ["skipped"] * 3
    finally:
        ray.shutdown()
    assert all(status(sw).values())


def test_kill_minus_9_of_a_pool_worker_then_rerun(sample_text_file, tmp_path):
    """A worker process SIGKILLed mid-training: its job is reported failed (dependents blocked),
    the driver survives, and the rerun resumes the training from its last checkpoint."""
    from qsink.sweep.execute import _Pool

    sw = load_sweep(write_sweep(tmp_path, sample_text_file, schemes="[w8a8]", handling="[none]", steps=400))
    train_job = sw.jobs[0]
    pool = _Pool(1)
    try:
        handle = pool.submit(train_job)
        ckpt = Path(train_job.payload["out"]) / "trainer_state.json"
        deadline = time.time() + 120
        while time.time() < deadline and not ckpt.is_file():
            time.sleep(0.2)
        assert ckpt.is_file()
        for proc in list(pool._pool._processes.values()):
            os.kill(proc.pid, signal.SIGKILL)
        [(h, summary)] = pool.wait([handle])
        assert h is handle and summary["status"] == "failed" and "worker lost" in summary["detail"]
        step = json.loads(ckpt.read_text())["step"]
        assert 2 <= step < 400
        h2 = pool.submit(train_job)  # a fresh pool replaces the broken one; the job resumes
        [(_, again)] = pool.wait([h2])
        assert again["status"] == "done" and again["detail"].startswith("step 400") and "resumed" in again["detail"], again
    finally:
        pool.close()
    assert [r["status"] for r in execute(sw)] == ["skipped", "done", "done"]


def test_blocks_that_share_a_cell_run_it_once_and_conflicting_settings_are_refused(tiny_model_dir, sample_text_file,
                                                                                   tmp_path):
    """Two evaluate blocks of one model both hold its fp cell: one job, and the second block's cells
    still depend on it; the same cell under different settings is an error."""
    block = (f"  - models: ['{tiny_model_dir}']\n    data: 'file:{sample_text_file}'\n    calib_data: 'file:{sample_text_file}'\n"
             "    ctx: 32\n    max_tokens: 64\n")
    path = tmp_path / "two.yaml"
    path.write_text(f"name: two\nout: {tmp_path / 'o'}\nevaluate:\n{block}    schemes: [w8a8]\n{block}    schemes: [w4a16]\n")
    keys = [j.key for j in load_sweep(path).jobs]
    m = str(tiny_model_dir)
    assert keys == [f"eval:{m}:fp", f"eval:{m}:w8a8", f"eval:{m}:w4a16"]
    assert load_sweep(path).job(f"eval:{m}:w4a16").deps == (f"eval:{m}:fp",)
    path.write_text(f"name: two\nout: {tmp_path / 'o'}\nevaluate:\n{block}    schemes: [w8a8]\n"
                    f"{block.replace('max_tokens: 64', 'max_tokens: 96')}    schemes: [w4a16]\n")
    with pytest.raises(QsinkError, match="appears in two evaluate blocks with different settings"):
        load_sweep(path)


def test_a_finished_sweep_is_told_without_a_tokenizer_model_or_worker(sample_text_file, tmp_path, monkeypatch, capsys):
    """Status and a rerun of a finished sweep read the outputs only: nothing loads a tokenizer or a
    model, and no worker, pool or Ray is started. A record that predates the agreement metrics is
    still not done, and the rerun runs exactly that cell."""
    import transformers

    from tests.conftest import run_cli

    path = write_sweep(tmp_path, sample_text_file, schemes="[w8a8]", handling="[none]")
    sw = load_sweep(path)
    assert [r["status"] for r in execute(sw)] == ["done"] * 3
    ex, runner = sys.modules["qsink.sweep.execute"], sys.modules["qsink.evaluate.runner"]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished sweep loaded a model or tokenizer, or started a worker")

    with monkeypatch.context() as m:
        for target, name in [(sys.modules["qsink.models.loader"], "load"), (runner, "load"), (runner, "run_cells"),
                             (transformers.AutoTokenizer, "from_pretrained"),
                             (transformers.AutoModelForCausalLM, "from_pretrained"),
                             (ex, "run_job"), (ex, "_Inline"), (ex, "_Pool"), (ex, "_Ray")]:
            m.setattr(target, name, refuse)
        assert all(status(sw).values())
        for kwargs in ({}, {"workers": 2}):
            res = execute(load_sweep(path), **kwargs)
            assert [r["status"] for r in res] == ["skipped"] * 3, res
        assert res[0]["detail"] == f"checkpoint {sw.jobs[0].payload['out']} is complete"
        assert all(r["detail"].startswith("ppl ") and r["pid"] == os.getpid() for r in res[1:]), res
        code, out, _ = run_cli(["sweep", str(path), "--plan"], capsys)
        assert code == 0 and "3 jobs, 3 done" in out, out
        code, out, _ = run_cli(["sweep", str(path)], capsys)
        assert code == 0 and "0 run, 3 already done" in out, out
    journal = [json.loads(line) for line in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert [e["status"] for e in journal] == ["done"] * 3 + ["skipped"] * 9

    # a quantized record from before the agreement metrics: not done, and only it runs again
    q = next(p for p in (tmp_path / "out" / "records").glob("*__w8a8__*.json"))
    rec = json.loads(q.read_text())
    del rec["metrics"]["kld_mean"]
    q.write_text(json.dumps(rec))
    assert list(status(sw).values()) == [True, True, False]
    assert [r["status"] for r in execute(load_sweep(path))] == ["skipped", "skipped", "done"]
    assert "kld_mean" in json.loads(q.read_text())["metrics"] and all(status(sw).values())
