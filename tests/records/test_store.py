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


def _store_with_records(root):
    """A records directory as a study has it: cells, a failed cell, a profile, a plot, the references/
    folder, and a second file for one key (an old stem), written after the first."""
    store = RecordStore(root)
    recs = [_record("a", "fp", 10.0), _record("a", "w8a8", 11.0), _record("b", "fp", 12.0)]
    paths = [store.write(r, f"{r['identity']['model']}__{r['identity']['scheme']}") for r in recs]
    failed = make_record({"model": "a", "scheme": "w4a4"}, {}, None, None, status="failed", error="boom")
    store.write(failed, "a__w4a4")
    (root / "references").mkdir()
    (root / f"a__profile__{'f' * 12}-attribution.png").write_bytes(b"png")
    (root / f"renamed__fp__{recs[0]['key'][:12]}.json").write_text(json.dumps(recs[0]))
    return store, recs, paths, failed


def test_snapshot_finds_the_record_the_glob_finds_and_reads_only_it(tmp_path):
    store, recs, paths, failed = _store_with_records(tmp_path / "records")
    snap = store.snapshot()
    for key in [r["key"] for r in recs] + [failed["key"], "0" * 64]:
        assert snap.find(key) == store.find(key)
        assert snap.find_ok(key) == store.find_ok(key)
    assert snap.find_ok(recs[1]["key"]) == (paths[1], recs[1])
    assert snap.find(failed["key"]) and snap.find_ok(failed["key"]) is None  # failed cells run again
    assert snap.find("0" * 64) is None
    # a key that is not a qsink key (no 12 hex digits) takes the glob, as before
    (tmp_path / "records" / "x__abc.json").write_text(json.dumps(recs[2]))
    assert snap.find("abc") == store.find("abc") == tmp_path / "records" / "x__abc.json"
    # only the candidate file is read: every other record unreadable changes nothing
    for p in (tmp_path / "records").glob("*.json"):
        if p != paths[1]:
            p.write_text("{not json")
    assert store.snapshot().find_ok(recs[1]["key"]) == (paths[1], recs[1])
    # no directory (a study not started) and a file in its place: nothing found, like the glob
    assert RecordStore(tmp_path / "none").snapshot().find(recs[0]["key"]) is None
    (tmp_path / "file").write_text("x")
    assert RecordStore(tmp_path / "file").snapshot().find(recs[0]["key"]) is None


def test_snapshot_sees_its_own_writes(tmp_path):
    snap = RecordStore(tmp_path).snapshot()
    rec = _record()
    assert snap.find(rec["key"]) is None
    path = snap.write(rec, "m__fp")
    assert snap.find_ok(rec["key"]) == (path, rec)


@pytest.mark.parametrize("damage", [lambda t: t[: len(t) // 2], lambda t: "", lambda t: "\x00garbage"],
                         ids=["half", "empty", "binary"])
def test_a_truncated_record_is_not_done_through_the_snapshot_and_a_one_line_error_for_readers(tmp_path, capsys, damage):
    store = RecordStore(tmp_path)
    rec = _record()
    path = store.write(rec, "m__fp")
    path.write_text(damage(path.read_text()))
    # not done, as before: the cell runs again and its whole record replaces the damaged one
    assert store.find_ok(rec["key"]) is None and store.snapshot().find_ok(rec["key"]) is None
    assert store.snapshot().find(rec["key"]) == path
    with pytest.raises(QsinkError) as e:
        store.load_all()
    assert str(e.value) == f"record {path} is not valid JSON; delete it and rerun the cell"
    code, _, err = run_cli(["leaderboard", "--results", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{path.name} is not valid JSON" in err.replace("\n", ""), err
