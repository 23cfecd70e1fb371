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


def _base_models(tok, model):
    from tests.conftest import tiny_gemma3, tiny_gpt2

    return {"llama": model, "gemma3 (online rotation)": tiny_gemma3(tok), "gpt2 (Conv1D)": tiny_gpt2(tok)}


@pytest.mark.parametrize("family", ["llama", "gemma3 (online rotation)", "gpt2 (Conv1D)"])
def test_cells_sharing_one_rotation_are_the_cells_that_rotate_their_own_copy(model, tok, windows, calib, family):
    """Hadamard's rotation is the same for every scheme: the cells start from one rotated model (rewrite_base_),
    quantized in place with the statistics of one shared pass, and give the logits, weights and reports of cells
    that rotate and calibrate a copy each; restore_ gives the rotated model back exactly."""
    from qsink.quant import restore_
    from qsink.quant.apply import rewrite_base_

    fp = _base_models(tok, model)[family]
    ids = windows.input_ids[:2, :24]
    cells = [("w8a8-static", "hadamard"), ("w4a4", "hadamard"), ("nvfp4", "hadamard"), ("w4a8", "quarot"),
             ("w8a8-static", "quarot")]
    base = rewrite_base_(copy.deepcopy(fp), make_handler("hadamard"))
    assert (logits_of(base, ids) - logits_of(fp, ids)).abs().max() < 1e-4  # the rotated model is the fp function
    base_logits = logits_of(base, ids)
    shared = CalibrationStats(base, adapter_for(base), calib, tokenizer=tok)
    for scheme, handling in cells:
        shared.declare(make_handler(handling).shared_needs(get_scheme(scheme)))
    for scheme, handling in cells:
        own, own_report = _quantized(fp, tok, calib, scheme, handling, None)
        report = quantize_(base, get_scheme(scheme), handling, calib, tok, sqnr=False, shared=shared)
        try:
            assert torch.equal(logits_of(own, ids), logits_of(base, ids)), (family, scheme, handling)
            assert own_report["handling"] == report["handling"] and report["timing"]["rewrite"] == "shared"
            assert report["timing"]["calibration"] == own_report["timing"]["calibration"].replace("own pass", "shared")
            mine = dict(base.named_modules())
            for name, m in own.named_modules():
                if hasattr(m, "weight_q"):
                    assert torch.equal(m.weight_q, mine[name].weight_q), (family, scheme, handling, name)
        finally:
            restore_(base)
        assert torch.equal(logits_of(base, ids), base_logits)
    assert shared.passes == 1  # one pass of the rotated model for every static and GPTQ cell


def test_a_rotated_model_takes_only_the_handlings_that_rotate_it_the_same_way(model, tok, calib):
    from qsink.errors import QsinkError
    from qsink.quant.apply import rewrite_base_

    base = rewrite_base_(copy.deepcopy(model), make_handler("hadamard"))
    for handling, options in [("none", None), ("smoothquant", None), ("hadamard", {"seed": 1})]:
        with pytest.raises(QsinkError, match="rewritten for hadamard"):
            quantize_(base, get_scheme("w8a8"), handling, calib, tok, options=options, sqnr=False)
    assert getattr(base, "qsink_originals", None) is None  # refused before anything changed
    with pytest.raises(QsinkError, match="already rewritten"):
        rewrite_base_(base, make_handler("hadamard"))
    with pytest.raises(QsinkError, match="cannot be shared"):
        rewrite_base_(copy.deepcopy(model), make_handler("smoothquant"))


def _cache_for(model, directory, calib):
    from qsink.evaluate.quantized import calibration_cache
    from qsink.evaluate.settings import EvalSettings

    return calibration_cache(directory, model, "sha-of-" + model.config.model_type, EvalSettings(), calib)


def _stats(model, tok, calib, cache, cells):
    stats = CalibrationStats(model, adapter_for(model), calib, tokenizer=tok, cache=cache)
    for scheme, handling in cells:
        stats.declare(make_handler(handling).shared_needs(get_scheme(scheme)))
    return stats


def test_the_statistics_written_to_disk_are_the_statistics_of_a_pass(model, tok, windows, calib, tmp_path):
    """A second process (here: a second CalibrationStats) reads the statistics back instead of running a pass, and
    its cells are the cells of a calibration pass of their own, bit for bit."""
    cells = [("w8a8-static", "none"), ("w4a16", "gptq"), ("gguf-q4_0", "imatrix"), ("w4a8", "clip"),
             ("w8a8-static", "token-keep")]
    first = _stats(model, tok, calib, _cache_for(model, tmp_path, calib), cells)
    for scheme, handling in cells:
        _quantized(model, tok, calib, scheme, handling, first)
    assert first.passes == 2 and not first.loaded and first.cache.path.exists()
    again = _stats(model, tok, calib, _cache_for(model, tmp_path, calib), cells)
    assert again.loaded
    for scheme, handling in cells:
        own, _ = _quantized(model, tok, calib, scheme, handling, None)
        mine, report = _quantized(model, tok, calib, scheme, handling, again)
        assert torch.equal(logits_of(own, windows.input_ids), logits_of(mine, windows.input_ids)), (scheme, handling)
        assert report["timing"]["calibration_cached"] == (report["timing"]["calibration"] == "shared")
    assert again.passes == 0


def test_a_stale_or_foreign_cache_is_recomputed_and_a_corrupt_one_names_the_file_to_delete(model, tok, calib, tmp_path):
    from qsink.errors import QsinkError
    from tests.conftest import tiny_llama

    cells = [("w8a8-static", "none")]
    cache = _cache_for(model, tmp_path, calib)
    _quantized(model, tok, calib, "w8a8-static", "none", _stats(model, tok, calib, cache, cells))
    # stale: written by another version of the code
    doc = torch.load(cache.path, weights_only=True)
    doc["identity"]["code"] = "0" * 64
    torch.save(doc, cache.path)
    stale = _stats(model, tok, calib, _cache_for(model, tmp_path, calib), cells)
    assert not stale.loaded and stale.cache.stale
    _quantized(model, tok, calib, "w8a8-static", "none", stale)
    assert stale.passes == 1 and torch.load(cache.path, weights_only=True)["identity"] == cache.identity  # replaced
    # foreign: another model's statistics under this model's name
    other = tiny_llama(tok)
    with torch.no_grad():
        next(other.parameters()).mul_(2)
    other_cache = _cache_for(other, tmp_path / "other", calib)
    other_cache.identity["where"]["model_sha256"] = "another model"
    _quantized(other, tok, calib, "w8a8-static", "none", _stats(other, tok, calib, other_cache, cells))
    other_cache.path.replace(cache.path)
    foreign = _stats(model, tok, calib, _cache_for(model, tmp_path, calib), cells)
    assert not foreign.loaded
    own, _ = _quantized(model, tok, calib, "w8a8-static", "none", None)
    mine, _ = _quantized(model, tok, calib, "w8a8-static", "none", foreign)
    ids = calib.input_ids[:1, :16]
    assert torch.equal(logits_of(own, ids), logits_of(mine, ids))
    # corrupt: one line naming the file and how to clear it
    cache.path.write_bytes(b"not a torch file")
    with pytest.raises(QsinkError, match=r"calibration cache .* is unreadable .*rm '.*\.pt'\) and run again") as e:
        _stats(model, tok, calib, _cache_for(model, tmp_path, calib), cells)
    assert "\n" not in str(e.value)
