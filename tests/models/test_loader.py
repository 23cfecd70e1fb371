"""Model resolution and loading: what loads, and a clear error for everything that should not."""

import shutil

import pytest
import torch

from qsink.errors import QsinkError
from qsink.models import check_safetensors, load, resolve
from tests.conftest import write_small_gguf


def test_hf_dir_loads_and_resolves(tiny_model_dir):
    res = resolve(str(tiny_model_dir))
    assert res.kind == "hf" and len(res.sha256) == 64 and res.name == "tiny-llama"
    model, tok = load(res, log=lambda m: None)
    assert not model.training
    assert model.config.num_hidden_layers == 2
    assert resolve(str(tiny_model_dir)).sha256 == res.sha256  # stable


def test_bf16_load(tiny_model_dir):
    model, _ = load(str(tiny_model_dir), dtype="bf16", log=lambda m: None)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(QsinkError, match="unknown dtype"):
        load(str(tiny_model_dir), dtype="int3", log=lambda m: None)


def test_missing_path_and_unknown_builtin():
    with pytest.raises(QsinkError, match="neither an existing path nor a built-in"):
        resolve("/no/such/model")
    with pytest.raises(QsinkError, match="did you mean 'smollm2-135m'"):
        resolve("smollm2-13m")


def test_dir_without_config(tmp_path):
    with pytest.raises(QsinkError, match="has no config.json"):
        resolve(str(tmp_path))


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(tiny_model_dir / "config.json", d)
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    with pytest.raises(QsinkError, match="only pickle weights.*refuses"):
        resolve(str(d))


def test_truncated_safetensors(tiny_model_dir, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_model_dir, d)
    st = d / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 100])
    with pytest.raises(QsinkError, match="corrupt or truncated safetensors"):
        resolve(str(d))
    st.write_bytes(b"\x00" * 7)
    with pytest.raises(QsinkError, match="corrupt or truncated safetensors"):
        check_safetensors(st)


def test_gguf_checks(tmp_path):
    good = write_small_gguf(tmp_path / "m.gguf")
    assert resolve(str(good)).kind == "gguf"
    data = good.read_bytes()
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(QsinkError, match="corrupt or truncated GGUF"):
        resolve(str(trunc))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + data[4:])
    with pytest.raises(QsinkError, match="not a GGUF file"):
        resolve(str(bad))
    other = tmp_path / "weights.npy"
    other.write_bytes(b"x")
    with pytest.raises(QsinkError, match="not a .gguf"):
        resolve(str(other))


def test_remote_code_needs_consent(tiny_model_dir, tmp_path):
    import json

    d = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    cfg["model_type"] = "x-custom-model"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QsinkError, match="--trust-remote-code"):
        load(str(d), log=lambda m: None)


def test_placement_known_answers():
    from qsink.models.loader import placement

    gib = 2**30
    assert placement(10 * gib, []) == "cpu"  # no GPU
    assert placement(10 * gib, [80 * gib]) == "cuda"  # fits in 0.8 of the free memory
    assert placement(70 * gib, [80 * gib, 80 * gib]) == "map"  # 70 > 0.8 x 80: spread it
    assert placement(1 * gib, [80 * gib], device="map") == "map"  # asked for
    assert placement(70 * gib, [80 * gib], device="cuda:1") == "cuda:1"  # explicit devices are obeyed
    assert placement(70 * gib, [80 * gib], device="cpu") == "cpu"


def test_weight_bytes_scale_with_the_load_dtype(tmp_path):
    import json

    from qsink.models.loader import _weight_bytes

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert _weight_bytes(tmp_path, "bf16") == 4000 and _weight_bytes(tmp_path, "fp32") == 8000
