"""``qsink evaluate`` as a function: :func:`run_matrix` from Python gives the records the command writes."""

import json

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
