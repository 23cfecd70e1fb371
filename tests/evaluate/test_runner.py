"""``qsink evaluate`` as a function: :func:`run_matrix` from Python gives the records the command writes."""

import json

import pytest

from qsink.evaluate.plan import plan_matrix
from qsink.evaluate.runner import run_matrix
from qsink.records import RecordStore
from tests.conftest import run_cli


def test_run_matrix_from_python_equals_the_command(tiny_model_dir, sample_text_file, tmp_path, capsys):
    common = dict(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", profile_samples=2)
    argv = ["evaluate", str(tiny_model_dir), "--text", str(sample_text_file), "--scheme", "w8a8", "--out", str(tmp_path / "cli")]
    for key, value in common.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    cells, _, _, settings = plan_matrix({"schemes": ["w8a8"], **common})
    text, outcomes = run_matrix([str(tiny_model_dir)], cells, settings, RecordStore(tmp_path / "py"),
                                text_file=sample_text_file, log=lambda m: None)
    assert text.name == "file:sample.txt" and [o.cell.label for o in outcomes] == ["fp", "w8a8"]
    by_cell = {json.loads(p.read_text())["identity"]["scheme"]: json.loads(p.read_text())
               for p in (tmp_path / "cli").glob("*.json") if "__profile__" not in p.name}
    for o in outcomes:
        cli = by_cell[o.cell.scheme]
        assert o.record["key"] == cli["key"]  # the same identity, so the same cell
        assert o.record["metrics"]["ppl"] == cli["metrics"]["ppl"] and o.record["profile"] == cli["profile"]


def _kld_matrix(tiny_model_dir, sample_text_file, out, schemes=("w4a4",), force=False, **extra):
    settings_opts = dict(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", profile_samples=0, **extra)
    cells, _, _, settings = plan_matrix({"schemes": list(schemes), **settings_opts}, force=force)
    logs = []
    _, outcomes = run_matrix([str(tiny_model_dir)], cells, settings, RecordStore(out), text_file=sample_text_file,
                             log=logs.append)
    return outcomes, logs


def test_cells_carry_agreement_and_share_one_stored_reference(tiny_model_dir, sample_text_file, tmp_path):
    out = tmp_path / "r"
    outcomes, _ = _kld_matrix(tiny_model_dir, sample_text_file, out, schemes=("w4a4", "w8a8"))
    fp, w4, w8 = (o.record for o in outcomes)
    refs = list((out / "references").glob("*.npz"))
    assert len(refs) == 1 and fp["config"]["kld_reference"]["path"] == f"references/{refs[0].name}"
    assert fp["config"]["kld_reference"]["bytes"] == refs[0].stat().st_size
    for rec in (w4, w8):
        m = rec["metrics"]
        assert m["kld_mean"] == m["agreement"]["kld"]["mean"] > 0 and 0 <= m["same_top"] <= 1
        assert rec["config"]["agreement"]["reference"]["key"] == fp["config"]["kld_reference"]["key"]
        assert "kld" in rec["config"]["agreement"]["definitions"]
    assert w4["metrics"]["kld_mean"] > w8["metrics"]["kld_mean"]  # 4-bit activations depart further than 8-bit
    # the same matrix again: nothing recomputed; a reference damaged on disk fails the cells that read it, by
    # name, and --force rebuilds it (the fp cell reruns)
    again, _ = _kld_matrix(tiny_model_dir, sample_text_file, out, schemes=("w4a4", "w8a8"))
    assert all(o.skipped for o in again)
    refs[0].write_bytes(refs[0].read_bytes()[:100])
    damaged, _ = _kld_matrix(tiny_model_dir, sample_text_file, out, schemes=("w4a4", "w8a8", "w4a8"))
    new = damaged[-1].record
    assert new["status"] == "failed" and refs[0].name in new["error"] and "--force" in new["error"]
    forced, _ = _kld_matrix(tiny_model_dir, sample_text_file, out, schemes=("w4a4", "w8a8", "w4a8"), force=True)
    assert [o.record["status"] for o in forced] == ["ok"] * 4 and not any(o.skipped for o in forced)
    assert forced[1].record["metrics"]["kld_mean"] == w4["metrics"]["kld_mean"]


def test_exact_kld_and_records_made_before_the_agreement_metrics(tiny_model_dir, sample_text_file, tmp_path):
    out = tmp_path / "r"
    (o_fp, o_q), _ = _kld_matrix(tiny_model_dir, sample_text_file, out)
    stored = o_q.record["metrics"]["kld_mean"]
    (_, exact), _ = _kld_matrix(tiny_model_dir, sample_text_file, out, kld_topk=0)  # another key: a new cell
    assert exact.path != o_q.path and exact.record["config"]["agreement"]["topk"] == 0
    assert exact.record["metrics"]["kld_mean"] >= stored - 1e-6  # top-K + rest is a lower bound of the exact value
    rec = json.loads(o_q.path.read_text())
    del rec["metrics"]["kld_mean"]  # as a record written before the agreement metrics existed
    o_q.path.write_text(json.dumps(rec))
    (fp2, q2), logs = _kld_matrix(tiny_model_dir, sample_text_file, out)
    assert fp2.skipped and not q2.skipped and q2.record["metrics"]["kld_mean"] == stored
    assert any("predates the agreement metrics" in line for line in logs)


def test_shared_calibration_and_in_place_cells_write_the_records_a_copy_per_cell_writes(tiny_model_dir, sample_text_file,
                                                                                          tmp_path, monkeypatch):
    """The matrix with shared calibration statistics, in-place quantization and one shared rotation gives the same
    records (every number but the timings) as one that copies the model, rewrites and calibrates in every cell, as
    before they existed."""
    import qsink.evaluate.quantized as quantized

    opts = dict(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", profile_samples=2, sqnr=True)
    cells, _, _, settings = plan_matrix({"schemes": ["w8a8-static", "w4a8", "w4a16"],
                                         "handling": ["none", "token-keep", "gptq", "smoothquant", "hadamard", "quarot"],
                                         **opts})

    def records(out):
        _, outcomes = run_matrix([str(tiny_model_dir)], cells, settings, RecordStore(out), text_file=sample_text_file,
                                 log=lambda m: None)
        return {o.cell.label: o.record for o in outcomes}

    fast = records(tmp_path / "fast")
    monkeypatch.setattr(quantized, "shared_calibration", lambda *a, **k: None)
    monkeypatch.setattr(quantized, "restorable", lambda *a, **k: False)
    monkeypatch.setattr(quantized, "rewrite_key", lambda *a, **k: None)
    slow = records(tmp_path / "slow")
    assert len(fast) == len(slow) >= 14
    timing = {c: r["config"].get("quant", {}).get("timing", {}) for c, r in fast.items()}
    shared = [c for c, t in timing.items() if t.get("calibration") == "shared"]
    assert {"w8a8-static", "w8a8-static+token-keep", "w4a16+gptq", "w8a8-static+hadamard", "w4a8+quarot"} <= set(shared)
    rotated = [c for c in fast if c.endswith(("+hadamard", "+quarot"))]
    assert len(rotated) == 6 and all(timing[c]["rewrite"] == "shared" for c in rotated)
    assert sum("rewrite_s" in timing[c] for c in rotated) == 1  # one rotation for all six
    assert all(r["timing"]["copy_s"] < 0.05 for c, r in fast.items() if c in ("w8a8-static", "w4a8+gptq"))  # in place
    for label, r in fast.items():
        s = slow[label]
        assert r["key"] == s["key"] and r["metrics"] == s["metrics"], label
        q, qs = dict(r["config"].get("quant", {})), dict(s["config"].get("quant", {}))
        for d in (q, qs):
            for k in ("prepare_s", "weight_encode_s", "timing"):
                d.pop(k, None)
            if isinstance(d.get("handling"), dict) and "profile_s" in d["handling"]:
                d["handling"] = {k: v for k, v in d["handling"].items() if not k.endswith("_s")}
        assert q == qs, label


def test_a_second_process_reads_the_calibration_statistics_from_disk(tiny_model_dir, sample_text_file, tmp_path):
    """As a sweep runs one cell per job: the second run of a static cell (another records directory, so it runs
    again) takes the statistics the first one wrote, and writes the same record."""
    opts = dict(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", profile_samples=0)
    cells, _, _, settings = plan_matrix({"schemes": ["w8a8-static"], "handling": ["none", "hadamard"], **opts})

    def run(out):
        _, outcomes = run_matrix([str(tiny_model_dir)], cells, settings, RecordStore(out), text_file=sample_text_file,
                                 log=lambda m: None, calib_cache=tmp_path / "calibration")
        return {o.cell.label: o.record for o in outcomes if o.cell.scheme != "fp"}

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert len(list((tmp_path / "calibration").glob("*.pt"))) == 2  # the fp model's and the rotated model's
    for label, r in second.items():
        assert r["config"]["quant"]["timing"]["calibration_cached"], label
        assert not first[label]["config"]["quant"]["timing"]["calibration_cached"], label
        assert r["key"] == first[label]["key"] and r["metrics"] == first[label]["metrics"], label


def test_spinquant_cells_keep_their_rotations_beside_the_records(tiny_model_dir, sample_text_file, tmp_path):
    """The handling's options are part of the cell's key; the learned rotations are written under rotations/ and a
    forced rerun evaluates with them instead of training again."""
    from qsink.errors import QsinkError

    opts = dict(ctx=32, max_tokens=128, calib=2, calib_data=f"file:{sample_text_file}", profile_samples=0,
                handling_options=["spinquant.steps=2", "spinquant.lr=1.0"])
    cells, _, _, settings = plan_matrix({"schemes": ["w4a4"], "handling": ["spinquant"], **opts})
    out = tmp_path / "records"

    def run(force=False):
        s = settings if not force else type(settings)(**{**settings.__dict__, "force": True})
        _, outcomes = run_matrix([str(tiny_model_dir)], cells, s, RecordStore(out), text_file=sample_text_file,
                                 log=lambda m: None)
        return outcomes[-1].record

    first = run()
    h = first["config"]["quant"]["handling"]
    assert first["status"] == "ok" and first["key"] and h["steps"] == 2 and h["lr"] == 1.0 and not h["from_cache"]
    assert len(list((out / "rotations").glob("spinquant-*.pt"))) == 1
    again = run(force=True)
    assert again["config"]["quant"]["handling"]["from_cache"] and again["metrics"]["ppl"] == first["metrics"]["ppl"]
    default_cells, _, _, default_settings = plan_matrix({"schemes": ["w4a4"], "handling": ["spinquant"],
                                                         **{k: v for k, v in opts.items() if k != "handling_options"}})
    from qsink.evaluate.runner import identity
    from qsink.models import ResolvedModel
    m = ResolvedModel("m", "hf", tmp_path, "m", "m")
    assert "handling_options" not in identity(m, default_cells[-1], type("T", (), {"sha256": "t"})(), default_settings, "c")
    for bad, why in [(["spinquant.stpes=2"], "bad options for spinquant"), (["spinquant"], "HANDLING.OPTION=VALUE"),
                     (["hadamard.seed=1"], "no cell of this matrix uses")]:
        with pytest.raises(QsinkError, match=why):
            plan_matrix({"schemes": ["w4a4"], "handling": ["spinquant"], **{**opts, "handling_options": bad}})
