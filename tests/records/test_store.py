"""The record store: atomic writes, lookup by key, and records the readers cannot use refused by name."""

import json

import pytest

from qsink.errors import QsinkError
from qsink.records import RecordStore, make_record
from tests.conftest import run_cli


def _record(model="m", scheme="fp", ppl=10.0):
    return make_record({"model": model, "scheme": scheme}, {"model": {"name": model}, "data": {"data_name": "t"}},
                       {"ppl": ppl}, {"wall_s": 1.0})


def test_write_find_and_load(tmp_path):
    store = RecordStore(tmp_path / "new" / "records")
    store.ensure_writable()
    assert not (tmp_path / "new").exists(), "checking writability must create nothing"
    rec = _record()
    path = store.write(rec, "m__fp")
    assert path.parent == tmp_path / "new" / "records" and path.name == f"m__fp__{rec['key'][:12]}.json"
    assert store.find_ok(rec["key"]) == (path, rec)
    assert store.load_all() == [rec]
    failed = make_record({"x": 1}, {}, None, None, status="failed", error="boom")
    store.write(failed, "m__w8a8")
    assert store.find(failed["key"]) and store.find_ok(failed["key"]) is None  # failed cells run again
    assert not list((tmp_path / "new" / "records").glob(".*")), "no temporary files left behind"


@pytest.mark.parametrize("doc, missing", [
    ({"schema": "qsink.record/1", "key": "abc"}, "status, identity, config, metrics"),
    ({**_record(), "config": "x"}, "config"),
    ({**_record(), "metrics": None}, "metrics"),
])
def test_a_record_the_readers_cannot_use_is_named(tmp_path, doc, missing):
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(QsinkError, match=f"bad.json has no valid {missing}"):
        RecordStore(tmp_path).load_all()


def test_leaderboard_and_study_refuse_a_hand_made_record_in_one_line(tmp_path, capsys):
    RecordStore(tmp_path).write(_record(), "m__fp")
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "qsink.record/1", "key": "abc"}))
    for argv in (["leaderboard", "--results", str(tmp_path)], ["study", str(tmp_path), "--baseline", "m"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "bad.json has no valid" in err, (argv, err)


def test_records_of_other_schemas_are_not_checked_against_this_one(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps({"schema": "qsink.profile/1", "key": "k", "summary": {}}))
    assert RecordStore(tmp_path).load_all() == []
    assert len(RecordStore(tmp_path).load_all(schema="qsink.profile/1")) == 1
