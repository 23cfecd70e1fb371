"""Models by hub id (``org/name``, ``@REVISION``, ``:FILE.gguf``), resolved for real through
``huggingface_hub`` against a hub cache built here in its own layout, and, for the online path,
against a local server that speaks the hub's API (:mod:`tests.models.hub_server`). No test needs the network."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path

import pytest

from qsink.errors import QsinkError
from qsink.evaluate.plan import Cell, plan_matrix
from qsink.evaluate.runner import identity
from qsink.models import resolve
from qsink.models.hub import cached_models
from tests.conftest import build_tiny_llama, run_cli, write_hub_snapshot, write_small_gguf
from tests.models.hub_server import HubServer, Repo, files_of

C1, C2 = "1" * 40, "2" * 40  # commits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("hub-src") / "tiny")


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An empty hub cache of this test's own, offline unless a test says otherwise."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("QSINK_HOME", str(tmp_path / "home"))
    return cache


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE off, in the environment and in huggingface_hub's constants (another test in this
    process may have set them: lm-eval's local tasks do)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: resolution offline must not touch the network."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network call attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_id_revision_and_commit_resolve_to_the_same_cached_files_offline(hub_env, checkpoint, no_network):
    snap = write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1, refs=("main", "v1.0"))
    found = [resolve(spec, log=lambda m: None) for spec in ("acme/tiny", f"acme/tiny@{C1}", "acme/tiny@main", "acme/tiny@v1.0")]
    assert {r.source for r in found} == {snap} and {r.commit for r in found} == {C1}
    assert {r.sha256 for r in found} == {resolve(str(checkpoint)).sha256}  # the weights' hash, as a local copy has
    first = found[0].to_dict()
    assert first["origin"] == "hub" and first["hub"] == {"repo": "acme/tiny", "revision": None, "commit": C1}
    import hashlib
    assert first["weights"] == {"model.safetensors": hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()}
    assert found[1].to_dict()["hub"]["revision"] == C1 and no_network == []


def test_unknown_revision_and_missing_repo_offline_are_one_line_each(hub_env, checkpoint, no_network):
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    with pytest.raises(QsinkError, match=r"acme/tiny is cached, but not at revision 'v9' \(cached: main \(111111111111\)\)") as e:
        resolve("acme/tiny@v9")
    assert "\n" not in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    with pytest.raises(QsinkError, match=r"acme/nope is not in the local Hugging Face cache .* fetch it with 'hf download acme/nope'") as e:
        resolve("acme/nope")
    assert "\n" not in str(e.value) and no_network == []


def test_a_pickle_only_snapshot_is_refused(hub_env, checkpoint, tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text((checkpoint / "config.json").read_text())
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    write_hub_snapshot(hub_env, "acme/pickled", src, C1)
    with pytest.raises(QsinkError, match="only pickle weights .*pytorch_model.bin.* arbitrary code"):
        resolve("acme/pickled")


def test_a_damaged_cached_blob_is_refused_by_its_name(hub_env, checkpoint):
    snap = write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, so the safetensors header check passes; the sha256 no longer matches the blob's name
    blob.write_bytes(bytes(data))
    with pytest.raises(QsinkError, match=f"does not hash to its name.*delete {blob}"):
        resolve("acme/tiny")


@pytest.mark.parametrize("spec", ["org/", "/no-such/abc/def", "a/b/c", "org/name@", "org/na me",
                                  "org/name:weights.bin", "-org/name"])
def test_malformed_ids_name_the_accepted_forms(hub_env, spec):
    with pytest.raises(QsinkError) as e:
        resolve(spec)
    msg = str(e.value)
    assert "\n" not in msg and ("org/name@REVISION" in msg or "neither an existing path" in msg)


def test_a_local_path_wins_over_the_hub_id_of_the_same_spelling(hub_env, checkpoint, tmp_path, monkeypatch):
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    local = build_tiny_llama(tmp_path / "work" / "acme" / "tiny", seed=1)  # other weights
    monkeypatch.chdir(tmp_path / "work")
    logs = []
    res = resolve("acme/tiny", log=logs.append)
    assert res.origin == "local" and res.source == local.resolve() and res.commit is None
    assert res.to_dict()["origin"] == "local" and "hub" not in res.to_dict()
    assert res.sha256 != resolve(str(checkpoint)).sha256 and "a path wins" in logs[0]


def test_no_network_falls_back_to_the_cache_after_one_attempt(hub_env, checkpoint, online, monkeypatch):
    """HF_HUB_OFFLINE unset and the hub unreachable: one connection, no retries, then the cache."""
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def hang_up():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()  # as a broken network does: no answer

    threading.Thread(target=hang_up, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        logs = []
        assert resolve("acme/tiny", log=logs.append).commit == C1
        assert len(accepted) == 1 and "could not be reached" in logs[0] and "using the cached snapshot 111111111111" in logs[0]
        with pytest.raises(QsinkError, match="acme/nope is not in the local Hugging Face cache .* could not be reached"):
            resolve("acme/nope")
        assert len(accepted) == 2
    finally:
        listener.close()


@pytest.fixture
def hub(hub_env, checkpoint, online, monkeypatch):
    """Online: the local hub server with acme/tiny (a checkpoint plus files qsink must not fetch)."""
    with HubServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        files = files_of(checkpoint) | {"README.md": b"# tiny", "pytorch_model.bin": b"pickle", "onnx/model.safetensors": b"x"}
        srv.repos["acme/tiny"] = Repo()
        srv.repos["acme/tiny"].add(C1, files)
        yield srv


def test_online_fetches_only_what_a_checkpoint_needs_and_then_resolves_offline(hub, hub_env, monkeypatch):
    res = resolve("acme/tiny", log=lambda m: None)
    assert res.commit == C1 and res.source == hub_env / "models--acme--tiny" / "snapshots" / C1
    assert sorted(hub.downloads) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                     "tokenizer_config.json"]
    assert (hub_env / "models--acme--tiny" / "refs" / "main").read_text() == C1
    hub.downloads.clear()
    assert resolve("acme/tiny", log=lambda m: None) == res and hub.downloads == []  # cached: metadata only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.requests)
    assert resolve("acme/tiny") == res and len(hub.requests) == n  # offline: no request at all
    assert [r["spec"] for r in cached_models()] == ["acme/tiny"]


def test_online_errors_are_one_line_and_fetch_nothing(hub, checkpoint):
    hub.repos["acme/pickled"] = Repo()
    hub.repos["acme/pickled"].add(C1, {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    hub.repos["acme/gated"] = Repo(gated=True)
    hub.repos["acme/gated"].add(C1, files_of(checkpoint))
    cases = {"acme/nope": "no model repo 'acme/nope' on the Hugging Face hub",
             "acme/tiny@v9": "acme/tiny has no revision 'v9' on the hub",
             "acme/pickled": "only pickle weights .*arbitrary code",
             "acme/gated": "acme/gated is a gated repo .*hf auth login",
             "acme/tiny:model.gguf": "acme/tiny has no file 'model.gguf'; it has no GGUF files"}
    for spec, why in cases.items():
        with pytest.raises(QsinkError, match=why) as e:
            resolve(spec, log=lambda m: None)
        assert "\n" not in str(e.value), spec
    assert hub.downloads == []


def test_a_gguf_file_in_a_repo_is_fetched_alone(hub, tmp_path):
    gguf = write_small_gguf(tmp_path / "small-q8_0.gguf")
    hub.repos["acme/tiny-gguf"] = Repo()
    hub.repos["acme/tiny-gguf"].add(C1, {"small-q8_0.gguf": gguf.read_bytes(), "other.gguf": b"GGUF", "README.md": b"#"})
    res = resolve("acme/tiny-gguf:small-q8_0.gguf", log=lambda m: None)
    assert res.kind == "gguf" and res.origin == "hub" and res.commit == C1 and res.name == "small-q8_0"
    assert res.sha256 == resolve(str(gguf)).sha256 and hub.downloads == ["small-q8_0.gguf"]
    with pytest.raises(QsinkError, match=r"holds GGUF files, not a safetensors checkpoint; name one as acme/tiny-gguf:FILE.gguf"):
        resolve("acme/tiny-gguf")
    with pytest.raises(QsinkError, match="has no file 'q4.gguf'; its GGUF files: small-q8_0.gguf, other.gguf"):
        resolve("acme/tiny-gguf:q4.gguf")


def test_a_moved_branch_is_a_new_cell_and_status_does_not_fetch(hub, hub_env, checkpoint, sample_text_file):
    first = resolve("acme/tiny", log=lambda m: None)
    config = json.loads((checkpoint / "config.json").read_text()) | {"rope_theta": 5000.0}  # same weights, new config
    hub.repos["acme/tiny"].add(C2, files_of(checkpoint) | {"config.json": json.dumps(config).encode()})
    hub.downloads.clear()
    with pytest.raises(QsinkError, match="acme/tiny is cached, but not at commit 222222222222 of main"):
        resolve("acme/tiny", fetch=False)  # a sweep's status looks, and does not download
    assert hub.downloads == []
    moved = resolve("acme/tiny", log=lambda m: None)
    assert moved.commit == C2 and moved.sha256 == first.sha256  # the same weights...
    cells, _, _, settings = plan_matrix({"schemes": ["w8a8"]})
    text = type("T", (), {"sha256": "t"})()
    a, b = (identity(r, Cell("w8a8"), text, settings, "c") for r in (first, moved))
    assert a != b and a["model_commit"] == C1 and b["model_commit"] == C2  # ...but another cell
    assert resolve(f"acme/tiny@{C1}", log=lambda m: None).source == first.source  # the old commit stays reachable


def test_evaluate_by_hub_id_pins_the_commit_in_its_record(hub_env, checkpoint, sample_text_file, tmp_path, capsys):
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    out = tmp_path / "records"
    args = ["evaluate", "acme/tiny", "--text", str(sample_text_file), "--ctx", "32", "--max-tokens", "128",
            "--profile-samples", "0", "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (rec_path,) = [p for p in out.glob("*.json")]
    rec = json.loads(rec_path.read_text())
    assert rec["identity"]["model_commit"] == C1 and rec["config"]["model"]["hub"]["commit"] == C1
    assert rec["config"]["model"]["origin"] == "hub" and rec["config"]["model"]["weights"]["model.safetensors"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "already had a record" in err
    # main moves to a new commit: the same id is another cell, never the old record
    config = json.loads((checkpoint / "config.json").read_text()) | {"rope_theta": 5000.0}
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in checkpoint.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / "config.json").write_text(json.dumps(config))
    write_hub_snapshot(hub_env, "acme/tiny", moved, C2)
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "already had a record" not in err
    commits = sorted(json.loads(p.read_text())["identity"]["model_commit"] for p in out.glob("*.json"))
    assert commits == [C1, C2]


def test_an_eval_recipe_and_qsink_models_take_hub_ids(hub_env, checkpoint, sample_text_file, tmp_path, capsys):
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C2, refs=("dev",))
    recipe = tmp_path / "hub.yaml"
    recipe.write_text(f"models: [acme/tiny@dev]\nschemes: []\nctx: 32\nmax_tokens: 128\nprofile_samples: 0\n"
                      f"data: file:{sample_text_file}\n")
    code, _, err = run_cli(["evaluate", "--recipe", str(recipe), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert rec["config"]["model"]["hub"] == {"repo": "acme/tiny", "revision": "dev", "commit": C2}
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "acme/tiny" in out and "acme/tiny@dev" in out and "111111111111" in out


def test_a_sweep_takes_hub_ids_and_its_status_sees_a_moved_branch(hub_env, checkpoint, sample_text_file, tmp_path):
    from qsink.sweep import execute, load_sweep, status

    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C1)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: hub\nout: {tmp_path / 'out'}\nevaluate:\n  - models: [acme/tiny]\n"
                    f"    data: 'file:{sample_text_file}'\n    calib_data: 'file:{sample_text_file}'\n    schemes: [w8a8]\n"
                    "    ctx: 32\n    max_tokens: 64\n    calib: 1\n    profile_samples: 0\n")
    assert [r["status"] for r in execute(load_sweep(path))] == ["done", "done"]
    assert list(status(load_sweep(path)).values()) == [True, True]
    write_hub_snapshot(hub_env, "acme/tiny", checkpoint, C2)  # main moves (the same files, another commit)
    assert list(status(load_sweep(path)).values()) == [False, False]
    assert [r["status"] for r in execute(load_sweep(path))] == ["done", "done"]
    commits = sorted(json.loads(p.read_text())["identity"]["model_commit"] for p in (tmp_path / "out" / "records").glob("*.json"))
    assert commits == [C1, C1, C2, C2]


def test_evaluate_fetches_a_hub_model_the_cache_lacks(hub, hub_env, sample_text_file, tmp_path, capsys):
    """Online: the model is checked first (a metadata request), then fetched once by the run."""
    args = ["evaluate", "acme/tiny", "--text", str(sample_text_file), "--ctx", "32", "--max-tokens", "64",
            "--profile-samples", "0", "--out", str(tmp_path / "r")]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert rec["config"]["model"]["hub"]["commit"] == C1 and hub.downloads.count("model.safetensors") == 1


@pytest.mark.parametrize("command", ["evaluate", "measure", "ablate --scheme w8a8"])
def test_a_model_that_cannot_be_had_is_told_before_torch_is_imported(hub_env, command):
    """Offline and not cached: one line and exit 2 from the model check alone (which is why it takes a
    fraction of a second): neither torch nor transformers has been imported when it is told."""
    import os
    import subprocess

    code = ("import sys\nfrom qsink.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "    print('EXIT', e.code, 'HEAVY', heavy, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code, *command.split()[:1], "acme/nope", *command.split()[1:]],
                       capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[-1] == "EXIT 2 HEAVY []", p.stderr
    assert len(lines) == 2 and "acme/nope is not in the local Hugging Face cache" in lines[0], p.stderr
