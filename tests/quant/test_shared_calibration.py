"""The shared calibration statistics (:class:`CalibrationStats`) give every cell the numbers its own calibration
pass would have given, bit for bit, from fewer passes over the fp model."""

import copy

import pytest
import torch

from qsink.models.adapter import adapter_for
from qsink.quant import get_scheme, quantize_
from qsink.quant.apply import make_handler
from qsink.quant.calibration import CalibrationStats
from tests.conftest import logits_of

# every handling whose cells take shared statistics, with a scheme that makes it calibrate; plus two that
# rewrite the model first (their own pass stays) and must come out the same too
CELLS = [("w8a8-static", "none"), ("w8a8-static", "token-keep"), ("w4a8", "token-keep"), ("w4a16", "gptq"),
         ("w8a8-static", "gptq"), ("w4a8", "clip"), ("gguf-q4_k_m", "imatrix"), ("gguf-q4_0", "imatrix"),
         ("w8a8-static", "smoothquant"), ("w4a4", "smoothquant"), ("w8a8-static", "hadamard")]


def _quantized(model, tok, calib, scheme, handling, shared):
    q = copy.deepcopy(model)
    report = quantize_(q, get_scheme(scheme), handling, calib, tok, sqnr=False, shared=shared)
    return q, report


def test_every_cell_is_the_same_with_shared_statistics(model, tok, windows, calib):
    shared = CalibrationStats(model, adapter_for(model), calib, tokenizer=tok)
    for scheme, handling in CELLS:
        shared.declare(make_handler(handling).shared_needs(get_scheme(scheme)))
    for scheme, handling in CELLS:
        own, own_report = _quantized(model, tok, calib, scheme, handling, None)
        mine, report = _quantized(model, tok, calib, scheme, handling, shared)
        assert torch.equal(logits_of(own, windows.input_ids), logits_of(mine, windows.input_ids)), (scheme, handling)
        for (n, a), (m, b) in zip(own.state_dict().items(), mine.state_dict().items()):
            assert n == m and (a is None or torch.equal(a, b)), (scheme, handling, n)
        assert own_report["handling"] == report["handling"]
        h = make_handler(handling)
        wanted = "none" if not (get_scheme(scheme).act_static or h.reads_calibration) else \
            "shared" if h.inputs_unchanged else "own pass"  # a pass only for static scales or a reader of its statistics
        assert report["timing"]["calibration"] == wanted, (scheme, handling)
    # one profile pass (token-keep's spike tokens) and one pass for everything else, whatever the number of cells
    assert shared.passes == 2


def test_an_undeclared_statistic_costs_a_pass_not_a_wrong_answer(model, tok, windows, calib):
    shared = CalibrationStats(model, adapter_for(model), calib, tokenizer=tok)
    _quantized(model, tok, calib, "w8a8-static", "none", shared)
    assert shared.passes == 1
    own, _ = _quantized(model, tok, calib, "w4a16", "gptq", None)
    mine, _ = _quantized(model, tok, calib, "w4a16", "gptq", shared)  # Hessians were not declared
    assert shared.passes == 2
    assert torch.equal(logits_of(own, windows.input_ids), logits_of(mine, windows.input_ids))


def test_the_shared_pass_leaves_the_fp_model_as_it_was(model, tok, windows, calib):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = logits_of(model, windows.input_ids)
    shared = CalibrationStats(model, adapter_for(model), calib, tokenizer=tok)
    shared.declare({"absmax", "rows", "hessian", "sumsq", "spikes", "kept-absmax"})
    shared.inputs("absmax")
    shared.kept_inputs()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(ref, logits_of(model, windows.input_ids))
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_unknown_statistic_is_refused(model, tok, calib):
    with pytest.raises(ValueError, match="unknown calibration statistics"):
        CalibrationStats(model, adapter_for(model), calib, tokenizer=tok).declare({"hessians"})


def test_kept_tokens_come_out_of_the_shared_statistics_as_out_of_their_own_pass():
    """A planted spike at position 0 (BOS): token-keep with a static scheme takes its scales from the rows it
    does not keep; shared or own, the static scales and the logits are the same, and they differ from the scales
    with every row (the mask is exercised)."""
    from qsink.data.text import Text
    from qsink.data.windows import make_windows
    from tests.conftest import SAMPLE_TEXT, make_tokenizer, planted_spike_model

    btok = make_tokenizer(add_bos=True)
    m = planted_spike_model(btok, 1, 4)
    calib = make_windows(btok, Text("c", SAMPLE_TEXT, "0"), ctx=32, max_tokens=3 * 31)
    shared = CalibrationStats(m, adapter_for(m), calib, tokenizer=btok)
    shared.declare(make_handler("token-keep").shared_needs(get_scheme("w8a8-static")) | {"absmax"})
    assert shared.spike_tokens()["positions"] == [0]
    own, _ = _quantized(m, btok, calib, "w8a8-static", "token-keep", None)
    mine, _ = _quantized(m, btok, calib, "w8a8-static", "token-keep", shared)
    plain, _ = _quantized(m, btok, calib, "w8a8-static", "none", shared)
    scales = lambda q: {k: v for k, v in q.state_dict().items() if k.endswith("act_scale")}
    assert scales(own).keys() and all(torch.equal(a, b) for a, b in zip(scales(own).values(), scales(mine).values()))
    assert any(not torch.equal(a, b) for a, b in zip(scales(own).values(), scales(plain).values()))
    assert torch.equal(logits_of(own, calib.input_ids), logits_of(mine, calib.input_ids))
    assert shared.passes == 2  # the profile, then one pass with and without the kept rows


@pytest.mark.parametrize("scheme, handling", [("w8a8-static", "none"), ("w4a8", "token-keep"), ("w4a16", "gptq"),
                                              ("w4a8", "clip"), ("gguf-q4_0", "imatrix"), ("nvfp4", "none"),
                                              ("w8a8+kv4", "llm-int8")])
def test_in_place_quantization_is_undone_exactly(model, tok, windows, calib, scheme, handling):
    """A handling that rewrites nothing can quantize the fp model itself: the cell computes what a copy computes,
    and restore_ gives back the same module objects, parameters, buffers and logits."""
    from qsink.quant import restorable, restore_

    assert restorable(model, handling)
    modules = list(model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = logits_of(model, windows.input_ids)
    copied, _ = _quantized(model, tok, calib, scheme, handling, None)
    quantize_(model, get_scheme(scheme), handling, calib, tok, sqnr=False)
    try:
        assert torch.equal(logits_of(model, windows.input_ids), logits_of(copied, windows.input_ids))
    finally:
        restore_(model)
    assert list(model.modules()) == modules and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits_of(model, windows.input_ids), ref)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_a_rewriting_handling_is_not_restored_in_place(model, tok, calib):
    from qsink.errors import QsinkError
    from qsink.quant import restorable, restore_

    assert not restorable(model, "smoothquant") and not restorable(model, "none", include=("lm_head",))
    m = copy.deepcopy(model)
    quantize_(m, get_scheme("w8a8"), "smoothquant", calib, tok, sqnr=False)
    with pytest.raises(QsinkError, match="cannot be restored in place"):
        restore_(m)
