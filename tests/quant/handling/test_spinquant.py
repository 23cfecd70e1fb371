"""SpinQuant's learned rotations: function-preserving, orthogonal after every step, better than their Hadamard
start on the loss they minimise, kept and reused, refused (R1) where the residual cannot be rotated."""

import copy

import pytest
import torch

from qsink.errors import QsinkError
from qsink.models.adapter import adapter_for
from qsink.quant import get_scheme, quantize_, set_mode
from qsink.quant.apply import make_handler
from qsink.quant.hadamard_matrices import apply_hadamard
from qsink.quant.handling.hadamard import fuse_norms_, untie_head_
from qsink.quant.handling.spinquant import _Layout
from tests.conftest import logits_of


def _random_orthogonal(n, seed):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def test_the_rotated_weights_of_a_training_step_compute_the_fp_function(model, windows):
    """Any orthogonal R1 and R2 (not only Hadamards): the weights a training step runs the model with give the fp
    model's logits (norms fused first), so the loss is the quantized network's and nothing else."""
    from torch.func import functional_call

    ids = windows.input_ids[:2]
    ref = logits_of(model, ids)
    m = copy.deepcopy(model)
    ad = adapter_for(m)
    untie_head_(m, ad)
    fuse_norms_(m, ad)
    layout = _Layout(m, ad, use_r1=True, use_r2=True, down="mlp.down_proj")
    hooks = [b.mlp.down_proj.register_forward_pre_hook(lambda mod, args: (apply_hadamard(args[0]),)) for b in m.model.layers]
    R1 = _random_orthogonal(48, 0).float()
    R2 = [_random_orthogonal(12, 1 + l).float() for l in range(2)]
    with torch.no_grad():
        out = functional_call(m, layout.weights(R1, R2), (ids,), {"use_cache": False}, strict=False).logits
    for h in hooks:
        h.remove()
    assert (out - ref).abs().max() < 1e-4
    assert not torch.equal(out, logits_of(m, ids))  # the rotated weights were used, not the module's own


def _spin(model, tok, calib, scheme="w4a4", handling="spinquant", artifacts=None, **options):
    q = copy.deepcopy(model)
    report = quantize_(q, get_scheme(scheme), handling, calib, tok, options=options, sqnr=False, artifacts=artifacts)
    return q, report


@pytest.mark.parametrize("scheme", ["w4a4", "w8a8+kv4"])
def test_learned_rotations_preserve_the_function_and_stay_orthogonal(model, tok, windows, calib, scheme):
    q, report = _spin(model, tok, calib, scheme, steps=6)
    h = report["handling"]
    assert h["steps"] == 6 and len(h["loss_curve"]) == 6 and h["r1"] == "learned"
    assert h["max_orthogonality_error"] < 1e-5  # after every step
    set_mode(q, "off")
    assert (logits_of(q, windows.input_ids) - logits_of(model, windows.input_ids)).abs().max() < 1e-4


def test_the_learned_rotations_lower_the_quantized_loss_below_the_hadamard_start(model, tok, calib):
    """On the calibration windows (the evaluation's windows are another text: held out)."""
    _, report = _spin(model, tok, calib, "w4a4", steps=25, lr=1.5)
    h = report["handling"]
    assert h["loss_learned"] < h["loss_at_hadamard"]
    zero, report0 = _spin(model, tok, calib, "w4a4", steps=0)
    assert report0["handling"]["loss_at_hadamard"] == pytest.approx(h["loss_at_hadamard"])


def test_zero_steps_is_the_hadamard_rotation(model, tok, calib):
    """Untrained, R1 is the hadamard handling's seeded matrix, folded by the same code: every linear that R2 does
    not touch has the hadamard cell's weights, bit for bit."""
    q, _ = _spin(model, tok, calib, "w4a4", steps=0)
    h = copy.deepcopy(model)
    quantize_(h, get_scheme("w4a4"), "hadamard", calib, tok, sqnr=False)
    mine, theirs = dict(q.named_modules()), dict(h.named_modules())
    names = [n for n, m in theirs.items() if hasattr(m, "weight_fp") and not n.endswith(("v_proj", "o_proj"))]
    assert len(names) == 10
    for n in names:
        assert torch.equal(mine[n].weight_fp, theirs[n].weight_fp), n
    assert not torch.equal(mine["model.layers.0.self_attn.v_proj"].weight_fp,
                           theirs["model.layers.0.self_attn.v_proj"].weight_fp)  # R2 is there


def test_rotations_are_kept_and_reused_by_schemes_that_quantize_activations_alike(model, tok, windows, calib, tmp_path):
    art = {"dir": tmp_path / "rotations", "model_sha256": "tiny"}
    first, r1 = _spin(model, tok, calib, "w4a8", artifacts=art, steps=3)
    assert not r1["handling"]["from_cache"] and len(list((tmp_path / "rotations").glob("*.pt"))) == 1
    again, r2 = _spin(model, tok, calib, "w4a8", artifacts=art, steps=3)
    assert r2["handling"]["from_cache"] and r2["handling"]["loss_curve"] == r1["handling"]["loss_curve"]
    assert torch.equal(logits_of(first, windows.input_ids), logits_of(again, windows.input_ids))
    _, r3 = _spin(model, tok, calib, "w8a8", artifacts=art, steps=3)  # 8-bit weights, the same 8-bit activations
    assert r3["handling"]["from_cache"]
    _, r4 = _spin(model, tok, calib, "w4a4", artifacts=art, steps=3)  # other activations: trained again
    assert not r4["handling"]["from_cache"]
    _, r5 = _spin(model, tok, calib, "w4a8", artifacts=art, steps=4)  # other training settings
    assert not r5["handling"]["from_cache"]
    path = next((tmp_path / "rotations").glob("*.pt"))
    for p in (tmp_path / "rotations").glob("*.pt"):
        p.write_bytes(b"garbage")
    with pytest.raises(QsinkError, match=r"unreadable.*rm '.*\.pt'"):
        _spin(model, tok, calib, "w4a8", artifacts=art, steps=3)
    assert path.exists()


def test_gptq_pairing_quantizes_the_rotated_weights(model, tok, windows, calib):
    q, report = _spin(model, tok, calib, "w4a8", "spinquant+gptq", steps=2)
    assert report["handling"]["gptq"]["n_linears"] > 0 and report["handling"]["r1"] == "learned"
    set_mode(q, "off")
    assert (logits_of(q, windows.input_ids) - logits_of(model, windows.input_ids)).abs().max() < 1e-4


def test_a_sandwich_norm_model_learns_r2_only_and_says_why(tok):
    from tests.conftest import family_windows, tiny_gemma3

    g = tiny_gemma3(tok)
    _, calib = family_windows(tok)
    q, report = _spin(g, tok, calib, "w4a4", steps=2)
    assert report["handling"]["r1"].startswith("not learned: the residual stream of gemma3")
    set_mode(q, "off")
    ids = calib.input_ids[:2, :24]
    assert (logits_of(q, ids) - logits_of(g, ids)).abs().max() < 1e-4


def test_weight_only_schemes_and_bad_options_are_refused(model, tok, calib):
    with pytest.raises(QsinkError, match="protects activation quantization"):
        _spin(model, tok, calib, "w4a16")
    with pytest.raises(QsinkError, match="steps >= 0"):
        make_handler("spinquant", {"steps": -1})
