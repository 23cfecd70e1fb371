"""Training: recipes, the loss window, a short run whose loss falls, and resume equivalence."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qsink.errors import QsinkError
from qsink.train import TrainRecipe, load_recipe, loss_window_labels, train
from qsink.train.loop import lr_at


def tiny_recipe(text_file, **kw):
    base = dict(name="tiny", data=[f"file:{text_file}"], val_data=f"file:{text_file}", vocab_size=300, seq_len=32,
                batch_size=8, steps=60, lr=3e-3, warmup=5, eval_every=20, ckpt_every=20, eval_batches=2,
                model={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2})
    base.update(kw)
    return TrainRecipe(**base)


def test_recipes_inherit_and_validate(tmp_path):
    (tmp_path / "base.yaml").write_text("name: b\nmodel: {hidden_size: 64, num_hidden_layers: 2}\nsteps: 10\n"
                                        "sizes: {gpu: {steps: 1000, model: {hidden_size: 512}}}\n")
    (tmp_path / "v.yaml").write_text("include: base.yaml\nname: v\nvariant: dyt\nmodel: {num_hidden_layers: 3}\n")
    r = load_recipe(tmp_path / "v.yaml")
    assert (r.name, r.variant, r.steps) == ("v", "dyt", 10)
    assert r.model == {"hidden_size": 64, "num_hidden_layers": 3}  # mappings merge key by key
    assert r.model_config()["norm"] == "dyt"
    g = load_recipe(tmp_path / "v.yaml", size="gpu")
    assert g.steps == 1000 and g.model["hidden_size"] == 512
    (tmp_path / "bad.yaml").write_text("include: base.yaml\nlearning_rate: 1\n")
    with pytest.raises(QsinkError, match="unknown key.*learning_rate.*valid keys"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "badv.yaml").write_text("variant: sandwhich\n")
    with pytest.raises(QsinkError, match="unknown variant 'sandwhich'"):
        load_recipe(tmp_path / "badv.yaml")


def test_every_shipped_recipe_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    for folder, prefix in (("variants", ""), ("bb", "bb-")):
        recipes = sorted((root / folder).glob("*.yaml"))
        assert len(recipes) >= 18
        names = {load_recipe(p).name for p in recipes}
        assert {prefix + n for n in ("baseline", "sandwich", "qknorm", "dyt", "gate-head", "vscale", "long-only")} <= names
        assert prefix + ("baseline-wd0" if prefix else "baseline-wd") in names
    assert all(load_recipe(p).tokenizer == "word" for p in (root / "bb").glob("*.yaml"))
    for p in (root / "search").glob("*.yaml"):
        load_recipe(p)


def test_loss_window():
    ids = torch.arange(10).repeat(2, 1)
    labels = loss_window_labels(ids, 3, 6)
    assert (labels[:, 3:7] == ids[:, 3:7]).all()
    assert (labels[:, :3] == -100).all() and (labels[:, 7:] == -100).all()
    assert torch.equal(loss_window_labels(ids, 0, None), ids)


def test_schedule():
    r = TrainRecipe(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, r) == pytest.approx(0.1) and lr_at(9, r) == pytest.approx(1.0)
    assert lr_at(60, r) == pytest.approx(0.55) and lr_at(110, r) == pytest.approx(0.1)


def test_short_run_loss_falls_and_loads_everywhere(sample_text_file, tmp_path):
    out = tmp_path / "run"
    res = train(tiny_recipe(sample_text_file), out, log=lambda m: None)
    assert res.step == 60
    first, last = res.history[0]["val_loss"], res.history[-1]["val_loss"]
    assert last < first - 0.5
    from qsink.data.text import load_text_file
    from qsink.data.windows import make_windows
    from qsink.measure.collect import profile
    from qsink.models import load

    model, tok = load(str(out), log=lambda m: None)  # a plain HF checkpoint directory
    assert tok("x").input_ids[0] == tok.bos_token_id  # BOS first
    w = make_windows(tok, load_text_file(sample_text_file), ctx=32, max_tokens=93)
    assert profile(model, tok, w).summary["sink_ratio"] is not None
    with pytest.raises(QsinkError, match="already holds a training run"):
        train(tiny_recipe(sample_text_file), out, log=lambda m: None)


def test_resume_matches_an_uninterrupted_run(sample_text_file, tmp_path):
    r = tiny_recipe(sample_text_file, steps=20, ckpt_every=10, eval_every=10)
    full = train(r, tmp_path / "full", log=lambda m: None)
    part = train(r, tmp_path / "part", log=lambda m: None, stop_after=10)
    assert part.step == 10 and json.loads((tmp_path / "part" / "trainer_state.json").read_text())["step"] == 10
    resumed = train(r, tmp_path / "part", resume=True, log=lambda m: None)
    assert resumed.step == 20
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val_loss == full.val_loss
    with pytest.raises(QsinkError, match="no checkpoint to resume"):
        train(r, tmp_path / "nothing", resume=True, log=lambda m: None)


def test_kill_minus_9_then_resume(sample_text_file, tmp_path):
    """A real interruption: the training process is SIGKILLed after its first checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: killed\ndata: ['file:{sample_text_file}']\nval_data: 'file:{sample_text_file}'\nvocab_size: 300\n"
        "seq_len: 32\nbatch_size: 8\nsteps: 4000\nwarmup: 5\neval_every: 1000\nckpt_every: 5\neval_batches: 1\n"
        "model: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2}\n")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "qsink", "train", str(recipe), "--out", str(out), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "trainer_state.json").is_file():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "trainer_state.json").read_text())  # the last checkpoint is intact
    assert 5 <= state["step"] < 4000 and state["step"] % 5 == 0
    r = load_recipe(recipe, overrides={"steps": 4000})
    resumed = train(r, out, resume=True, log=lambda m: None, stop_after=state["step"] + 5)
    assert resumed.step == state["step"] + 5


def test_ddp_over_two_processes_matches_one(sample_text_file, tmp_path):
    """torchrun with 2 CPU processes (gloo) computes the same global batch as one process."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: ddp\ndata: ['file:{sample_text_file}']\nval_data: 'file:{sample_text_file}'\nvocab_size: 300\n"
        "seq_len: 32\nbatch_size: 8\nsteps: 8\nwarmup: 2\neval_every: 8\nckpt_every: 8\neval_batches: 2\n"
        "model: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "-m", "qsink", "train", str(recipe), "--out", str(tmp_path / "ddp"), "--device", "cpu"],
                   check=True, env=env, capture_output=True, timeout=300)
    single = train(load_recipe(recipe), tmp_path / "one", log=lambda m: None)
    ddp = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())["history"][-1]
    assert ddp["val_loss"] == pytest.approx(single.val_loss, rel=1e-4)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_time_budget_stops_with_a_checkpoint(sample_text_file, tmp_path):
    r = tiny_recipe(sample_text_file, steps=100000, max_minutes=0.05, eval_every=10**6, ckpt_every=10**6)
    res = train(r, tmp_path / "t", log=lambda m: None)
    assert 0 < res.step < 100000 and res.val_loss is not None
    assert json.loads((tmp_path / "t" / "trainer_state.json").read_text())["step"] == res.step


def test_checkpoints_from_before_a_new_recipe_key_still_resume():
    from qsink.train.loop import same_recipe

    r = TrainRecipe(name="x", lr=1e-3)
    saved = r.to_dict()
    del saved["tokenizer"]  # a checkpoint written before the key existed, at its default
    assert same_recipe(saved, r)
    assert not same_recipe({**saved, "lr": 2e-3}, r)
    assert not same_recipe(saved, TrainRecipe(name="x", lr=1e-3, tokenizer="word"))
    assert not same_recipe({**saved, "retired_key": 1}, r)


def test_explore_probe_known_answers():
    """Zeroed queries give uniform attention (alpha = mean of 1/(q+1) over dormant queries), and a
    planted BOS value in the final hidden state is reported as the layer's top and BOS ratio."""
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.explore import probe

    torch.manual_seed(0)
    model = QsinkForCausalLM(QsinkConfig(vocab_size=10, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         bos_token_id=9))
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    x = torch.randint(0, 9, (4, 12))
    x[:, 0] = 9
    alpha, peaks = probe(model, x, n_triggers=3)
    q = torch.arange(2, 12)
    dormant = x[:, q] >= 3
    want = float((1.0 / (q + 1).float()).expand_as(dormant)[dormant].mean())
    assert [len(a) for a in alpha] == [2, 2]
    assert all(v == pytest.approx(want, abs=1e-3) for a in alpha for v in a)
    assert model.training and model.config._attn_implementation != "eager"  # restored
    # plant a BOS spike in the first block's output (hidden_states[1]; the last entry is after the final norm)
    handle = model.model.layers[0].register_forward_hook(lambda m, i, o: o.index_put((torch.tensor([0]), torch.tensor([0]), torch.tensor([5])), torch.tensor(1e4)))
    try:
        _, peaks = probe(model, x[:1], n_triggers=3)
    finally:
        handle.remove()
    top, ratio, bos_ratio = peaks[0]
    assert top == pytest.approx(1e4) and bos_ratio == pytest.approx(ratio) and ratio > 100


def _tiny_recipe_file(path, text_file, name: str, extra: str = ""):
    """A YAML recipe for a 3-step run of a 1-layer model on ``text_file``."""
    path.write_text(
        f"name: {name}\ndata: ['file:{text_file}']\nval_data: 'file:{text_file}'\nvocab_size: 300\n"
        "seq_len: 32\nbatch_size: 4\nsteps: 3\nwarmup: 1\neval_batches: 1\n" + extra
        + "model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2}\n")
    return path


def test_cli_seed_override_changes_the_run_and_is_recorded(sample_text_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qsink.cli import app

    recipe = _tiny_recipe_file(tmp_path / "r.yaml", sample_text_file, "seeded", "eval_every: 3\nckpt_every: 3\n")
    monkeypatch.chdir(tmp_path)
    for seed in (None, 5):
        args = ["train", str(recipe), "--device", "cpu"] + ([] if seed is None else ["--seed", str(seed)])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    a, b = tmp_path / "runs/train/seeded", tmp_path / "runs/train/seeded-seed5"  # seeded runs get their own directory
    assert json.loads((b / "trainer_state.json").read_text())["recipe"]["seed"] == 5
    assert json.loads((a / "trainer_state.json").read_text())["recipe"]["seed"] == 0
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert not torch.equal(wa["model.embed_tokens.weight"], wb["model.embed_tokens.weight"])


def test_decay_embeddings_switch():
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.loop import _param_groups

    model = QsinkForCausalLM(QsinkConfig(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    emb = model.model.embed_tokens.weight
    for flag in (True, False):
        decay, rest = _param_groups(model, 0.1, decay_embeddings=flag)
        assert any(p is emb for p in decay["params"]) is flag and any(p is emb for p in rest["params"]) is not flag
        assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
        assert all(p.dim() >= 2 for p in decay["params"]) and any(p.dim() == 1 for p in rest["params"])


def _siblings(path):
    """Everything beside ``path`` in its folder (hidden names included), with the files' contents."""
    return {p.name: p.read_text() if p.is_file() else sorted(c.name for c in p.iterdir()) for p in path.parent.iterdir()}


def test_out_dir_with_other_files_is_refused_and_kept(sample_text_file, tmp_path):
    out = tmp_path / "runs" / "d"
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("x")
    before = _siblings(out)
    with pytest.raises(QsinkError, match="not a qsink training checkpoint; choose a new or empty directory"):
        train(tiny_recipe(sample_text_file, steps=2), out, log=lambda m: None)
    assert _siblings(out) == before == {"d": ["precious.txt"]}
    assert (out / "precious.txt").read_text() == "x"


def test_out_that_is_a_file_is_refused_and_kept(sample_text_file, tmp_path):
    out = tmp_path / "runs" / "f"
    out.parent.mkdir()
    out.write_text("keep me")
    with pytest.raises(QsinkError, match="is a file, not a checkpoint directory; choose another --out"):
        train(tiny_recipe(sample_text_file, steps=2), out, log=lambda m: None)
    assert _siblings(out) == {"f": "keep me"}  # no hidden .f.old beside it


def test_empty_out_dir_is_used(sample_text_file, tmp_path):
    out = tmp_path / "runs" / "empty"
    out.mkdir(parents=True)
    res = train(tiny_recipe(sample_text_file, steps=2, eval_every=2, ckpt_every=2), out, log=lambda m: None)
    assert res.step == 2 and json.loads((out / "trainer_state.json").read_text())["step"] == 2
    assert sorted(_siblings(out)) == ["empty"]  # no temporary or old directories left behind


def test_cli_train_refuses_an_out_dir_with_other_files(sample_text_file, tmp_path, capsys):
    from tests.conftest import run_cli

    recipe = _tiny_recipe_file(tmp_path / "r.yaml", sample_text_file, "cli")
    out = tmp_path / "d"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    code, _, err = run_cli(["train", str(recipe), "--out", str(out), "--steps", "2", "--device", "cpu"], capsys)
    assert code == 2 and "error:" in err and "not a qsink training checkpoint" in err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"] and (out / "precious.txt").read_text() == "x"


def test_save_checkpoint_replaces_only_checkpoints(tmp_path):
    """save_checkpoint itself refuses files and foreign directories, and its rename of the previous
    checkpoint clobbers nothing, not even a user's ``.NAME.old``."""
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.loop import save_checkpoint
    from tests.conftest import make_tokenizer

    tok = make_tokenizer(True)
    model = QsinkForCausalLM(QsinkConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    opt = torch.optim.AdamW(model.parameters())
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    (tmp_path / "file").write_text("y")
    for out in (tmp_path / "foreign", tmp_path / "file"):
        with pytest.raises(QsinkError, match="--out"):
            save_checkpoint(out, model, tok, opt, {"step": 1})
    (tmp_path / ".run.old").write_text("mine")  # a user's file with the name the old checkpoint once took
    (tmp_path / ".run.old.d").mkdir()
    (tmp_path / ".run.old.d" / "z").write_text("mine too")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "run", model, tok, opt, {"step": step})
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.old", ".run.old.d", "file", "foreign", "run"]
    assert (tmp_path / ".run.old").read_text() == "mine" and (tmp_path / ".run.old.d" / "z").read_text() == "mine too"
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "x" and (tmp_path / "file").read_text() == "y"


@pytest.mark.parametrize("key, yaml_value, expect", [
    ("lr", "fast", "must be a number"),
    ("lr", "1e-3", "YAML reads 1e-3 as text"),
    ("seq_len", "abc", "must be a whole number"),
    ("steps", "10.5", "must be a whole number"),
    ("decay_embeddings", "maybe", "must be true or false"),
    ("name", "12", "must be a string"),
    ("data", "austen:train", "must be a list of strings"),
    ("betas", "[0.9, x]", "must be a list of numbers"),
    ("model", "[1]", "must be a mapping"),
    ("loss_max", "x", "must be a whole number (or null)"),
    ("warmup", "", "must be a whole number"),  # an empty value is null
    ("lr", "0", "must be more than 0"),
    ("lr", "-1.0", "must be more than 0"),
    ("warmup", "-1", "must be at least 0"),
    ("weight_decay", "-0.1", "must be at least 0"),
    ("eval_every", "0", "must be at least 1"),
    ("ckpt_every", "0", "must be at least 1"),
    ("eval_batches", "0", "must be at least 1"),
    ("threads", "0", "must be at least 1"),
    ("max_minutes", "0", "must be more than 0"),
    ("betas", "[0.9]", "two numbers in"),
])
def test_recipe_values_of_the_wrong_type_or_range_are_refused(tmp_path, key, yaml_value, expect):
    import re

    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\n{key}: {yaml_value}\n")
    value = yaml.safe_load(path.read_text())[key]
    pattern = f"recipe {re.escape(str(path))}: {key} .*{re.escape(expect)}"
    with pytest.raises(QsinkError, match=pattern):
        load_recipe(path)
    with pytest.raises(QsinkError, match=re.escape(expect)):
        TrainRecipe(**{key: value})


def test_recipe_values_that_are_fine_pass():
    r = TrainRecipe(lr=1, warmup=0, weight_decay=0, threads=None, max_minutes=0.5, loss_max=None, betas=[0, 0.5])
    assert r.lr == 1 and r.max_minutes == 0.5


@pytest.mark.parametrize("model, expect", [
    ({"hidden_sise": 64}, "unknown key 'hidden_sise'; did you mean 'hidden_size'? valid keys: "),
    ({"num_heads": 2}, "unknown key 'num_heads'; did you mean 'num_attention_heads'?"),
    ({"vocab_size": 64}, "vocab_size cannot be set in a recipe"),
    ({"max_position_embeddings": 64}, "max_position_embeddings cannot be set in a recipe, it follows seq_len"),
    ({"hidden_size": "64"}, "hidden_size must be a whole number, not '64'"),
    ({"vscale": "no"}, "vscale must be true or false, not 'no'"),
    ({"hidden_size": 64, "num_attention_heads": 5}, "hidden_size 64 is not divisible by num_attention_heads 5"),
    ({"norm": "rms"}, "unknown norm 'rms'"),
])
def test_recipe_model_block_is_checked(tmp_path, model, expect):
    import re

    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "model": model}))
    with pytest.raises(QsinkError, match=f"recipe .*{re.escape(expect)}"):
        load_recipe(path)
    if "hidden_sise" in model:  # the valid keys are listed
        with pytest.raises(QsinkError, match="num_hidden_layers, rope_theta"):
            TrainRecipe(model=model)
