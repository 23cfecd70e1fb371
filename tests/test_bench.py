"""Benchmarks: the peak-RSS stamp against the kernel's own figure, and a tiny run of the ratio code."""

import dataclasses
import json
import sys
import time

import pytest
import torch

from tests.conftest import SAMPLE_TEXT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_rss_matches_the_kernels_high_water_mark(tmp_path):
    from qsink.bench import peak_rss_mib, write_json

    block = torch.ones(64 * 2**20 // 4)  # touch 64 MiB so the high-water mark is not start-up noise
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    assert peak_rss_mib() == pytest.approx(hwm_kib / 1024, abs=1.0)
    assert peak_rss_mib() >= 64
    path = write_json({"x": 1}, tmp_path / "b.json")
    assert json.loads(path.read_text())["peak_rss_mib"] >= 64
    del block


class FakeClock:
    """Stands in for the ``time`` module inside qsink.bench: ``perf_counter`` reads ``now`` and then
    moves it on by ``tick``; whatever the test does between two readings is the measured duration."""

    def __init__(self, now=1000.0, tick=0.0):
        self.now, self.tick = now, tick

    def perf_counter(self):
        t = self.now
        self.now += self.tick
        return t

    strftime = staticmethod(time.strftime)
    gmtime = staticmethod(time.gmtime)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-block qsink-family model, its tokenizer and the sample text."""
    from qsink.data.text import load_text_file
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("bench") / "sample.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    text = load_text_file(path)
    tok = train_tokenizer([text], 300, log=lambda m: None)
    torch.manual_seed(0)
    model = QsinkForCausalLM(QsinkConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         bos_token_id=tok.bos_token_id)).eval()
    return model, tok, text


def assert_best_and_ratios(doc, ratios):
    """Every recorded pass is a positive time, ``best_s`` is each side's fastest pass, and every ratio
    in ``ratios`` ((reported ratio, numerator side, denominator side)) is built from those raw passes."""
    assert all(len(v) == doc["repeats"] and all(t > 0 for t in v) for v in doc["seconds"].values())
    assert doc["best_s"] == {k: min(v) for k, v in doc["seconds"].items()}
    for got, num, den in ratios:
        assert got == pytest.approx(min(doc["seconds"][num]) / min(doc["seconds"][den]), rel=1e-12)


def test_quant_ratio_on_a_tiny_model(tiny):
    from qsink.bench import bench_quant
    from qsink.data.windows import make_windows
    from qsink.evaluate.perplexity import perplexity

    model, tok, text = tiny
    doc = bench_quant(model, tok, text, text, cells=(("w8a8", "none"), ("w4a4", "none")), windows_n=2, ctx=32, repeats=2,
                      batch_size=2, log=lambda m: None)
    assert set(doc["ratio"]) == {"w8a8+none", "w4a4+none"} and set(doc["seconds"]) == {"fp", "w8a8+none", "w4a4+none"}
    assert_best_and_ratios(doc, [(doc["ratio"][k], k, "fp") for k in ("w8a8+none", "w4a4+none")])
    # the fp side is the model untouched: its perplexity is what qsink's evaluator gives directly
    windows = make_windows(tok, text, 32, max_tokens=2 * 32)
    assert doc["windows"] == windows.n_windows == 2
    assert doc["ppl"]["fp"] == pytest.approx(perplexity(model, tok, windows, 2).ppl, rel=1e-6)
    assert doc["ppl"]["w4a4+none"] != doc["ppl"]["fp"]  # the quantized copies are really quantized


def test_quant_ratio_known_answer(tiny, monkeypatch):
    """Injected per-pass times: the ratio is each cell's fastest pass over fp's fastest pass."""
    import qsink.bench
    from qsink.bench import bench_quant

    model, tok, text = tiny
    cell_of = {}  # id(model copy) -> cell name, recorded as bench_quant quantizes each copy
    real_quantize_for, real_perplexity = qsink.bench.quantize_for, qsink.bench.perplexity

    def quantize_for(m, tokenizer, cell, *args, **kwargs):
        cell_of[id(m)] = f"{cell.scheme}+{cell.handling}"
        return real_quantize_for(m, tokenizer, cell, *args, **kwargs)

    script = {"fp": [0.5, 0.25, 0.375], "w8a8+none": [0.75, 1.0, 2.0], "w4a4+none": [2.0, 4.0, 0.5]}
    timed = {k: iter(v) for k, v in script.items()}

    warmed = []

    def perplexity(m, tokenizer, windows, batch_size=8, on_batch=None, observers=()):
        res = real_perplexity(m, tokenizer, windows, batch_size, observers=observers)
        if not warmed:  # the warm-up pass (fp, before any copy is quantized), not timed
            assert m is model and not cell_of
            warmed.append(res)
            return res
        name = "fp" if m is model else cell_of[id(m)]
        return dataclasses.replace(res, wall_s=next(timed[name]))

    monkeypatch.setattr(qsink.bench, "quantize_for", quantize_for)
    monkeypatch.setattr(qsink.bench, "perplexity", perplexity)
    doc = bench_quant(model, tok, text, text, cells=(("w8a8", "none"), ("w4a4", "none")), windows_n=2, ctx=32, repeats=3,
                      batch_size=2, log=lambda m: None)
    assert doc["seconds"] == script
    assert doc["best_s"] == {"fp": 0.25, "w8a8+none": 0.75, "w4a4+none": 0.5}
    assert doc["ratio"] == {"w8a8+none": 3.0, "w4a4+none": 2.0}
    assert doc["tokens_per_s"] == {"fp": 2 * 32 / 0.25, "w8a8+none": 2 * 32 / 0.75, "w4a4+none": 2 * 32 / 0.5}
    assert 0 < doc["peak_rss_mib_fp_eval"] <= doc["peak_rss_mib_all_copies"]


def test_measure_ratio_on_a_tiny_model(tiny):
    from qsink.bench import bench_measure

    model, tok, text = tiny
    doc = bench_measure(model, tok, text, samples=2, ctx=32, repeats=2, log=lambda m: None)
    assert doc["windows"] == 2 and set(doc["seconds"]) == {"plain_forward_hidden_states", "measure", "measure_without_attention"}
    assert_best_and_ratios(doc, [(doc["ratio"], "measure", "plain_forward_hidden_states"),
                                 (doc["ratio_without_attention"], "measure_without_attention", "plain_forward_hidden_states")])


def test_measure_ratio_known_answer(tiny, monkeypatch):
    """A clock that only moves when the model runs a forward (plain side) or the profiler is called
    (measure sides), by scripted amounts: the ratios are the fastest passes' quotients."""
    import qsink.bench
    from qsink.bench import bench_measure

    model, tok, text = tiny
    clock = FakeClock()
    forward_s = iter([7.0, 1.0, 1.5, 1.0, 1.0])  # warm-up, then 2 windows x 2 passes: 2.5 s and 2.0 s
    profile_s = {None: iter([3.0, 2.5]), 0: iter([2.25, 2.75])}  # keyed by attn_windows: with / without attention

    def fake_profile(m, tokenizer, windows, settings, batch_size=1):
        assert m is model and windows.n_windows == 2
        clock.now += next(profile_s[settings.attn_windows])

    handle = model.register_forward_hook(lambda mod, args, out: setattr(clock, "now", clock.now + next(forward_s)))
    monkeypatch.setattr(qsink.bench, "time", clock)
    monkeypatch.setattr(qsink.bench, "profile", fake_profile)
    try:
        doc = bench_measure(model, tok, text, samples=2, ctx=32, repeats=2, log=lambda m: None)
    finally:
        handle.remove()
    assert doc["seconds"] == {"plain_forward_hidden_states": [2.5, 2.0], "measure": [3.0, 2.5],
                              "measure_without_attention": [2.25, 2.75]}
    assert doc["ratio"] == 1.25 and doc["ratio_without_attention"] == 1.125


def test_matmul_peak_takes_the_fastest_repeat(monkeypatch):
    import qsink.bench

    readings = iter([10.0, 11.0, 20.0, 20.5, 30.0, 32.0])  # three timed matmuls: 1.0 s, 0.5 s, 2.0 s
    clock = FakeClock()
    clock.perf_counter = lambda: next(readings)
    monkeypatch.setattr(qsink.bench, "time", clock)
    assert qsink.bench.matmul_peak_gflops(n=64, repeats=3) == pytest.approx(2 * 64**3 / 0.5 / 1e9, rel=1e-12)


def test_train_ratio_on_a_tiny_recipe(sample_text_file):
    from qsink.bench import bench_train
    from qsink.train import TrainRecipe

    r = TrainRecipe(name="tiny", data=[f"file:{sample_text_file}"], val_data=f"file:{sample_text_file}", vocab_size=300,
                    seq_len=32, batch_size=4, warmup=1, eval_batches=1, threads=1,
                    model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    doc = bench_train(r, steps=3, log=lambda m: None)
    before, after = doc["plain_loop_before_after_tokens_per_s"]
    assert before > 0 and after > 0 and doc["qsink_tokens_per_s"] > 0
    assert doc["plain_loop_tokens_per_s"] == max(before, after)  # the faster plain loop counts
    assert doc["ratio"] == pytest.approx(doc["qsink_tokens_per_s"] / max(before, after), rel=1e-12)
    assert doc["matmul_peak_gflops"] > 0
    assert doc["mfu"] == pytest.approx(doc["qsink_tokens_per_s"] * 6 * doc["n_params"] / (doc["matmul_peak_gflops"] * 1e9),
                                       rel=1e-12)


def test_train_ratio_known_answer(sample_text_file, monkeypatch):
    """A fake clock: each plain loop lasts one clock tick (0.25 s before qsink's run, 0.125 s after),
    qsink's steps end 0.5 s apart, and the matmul peak is fixed, so every figure is known."""
    import qsink.bench
    from qsink.bench import bench_train
    from qsink.train import TrainRecipe

    steps, batch, seq = 3, 4, 32
    r = TrainRecipe(name="tiny", data=[f"file:{sample_text_file}"], val_data=f"file:{sample_text_file}", vocab_size=300,
                    seq_len=seq, batch_size=batch, warmup=1, eval_batches=1, threads=1,
                    model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    clock = FakeClock(tick=0.25)
    asked = []

    def fake_train(recipe, out, log=None, on_step=None):
        asked.append(recipe.steps)
        for i in range(recipe.steps):
            clock.now = 5000.0 + 0.5 * i
            on_step(i + 1, 0.0, 0.0)
        clock.tick = 0.125

    monkeypatch.setattr(qsink.bench, "time", clock)
    monkeypatch.setattr(qsink.bench, "train", fake_train)
    monkeypatch.setattr(qsink.bench, "matmul_peak_gflops", lambda: 50.0)
    doc = bench_train(r, steps=steps, log=lambda m: None)
    tokens = steps * batch * seq
    assert asked == [steps + 1]  # one warm-up step, then the timed ones
    assert doc["plain_loop_before_after_tokens_per_s"] == [tokens / 0.25, tokens / 0.125]
    assert doc["plain_loop_tokens_per_s"] == tokens / 0.125
    assert doc["qsink_tokens_per_s"] == tokens / (steps * 0.5)
    assert doc["ratio"] == pytest.approx((tokens / 1.5) / (tokens / 0.125), rel=1e-12)  # = 1 / 12
    assert doc["mfu"] == pytest.approx((tokens / 1.5) * 6 * doc["n_params"] / 50e9, rel=1e-12)


def test_quant_with_kld_times_each_cell_with_and_without_its_agreement(tiny):
    from qsink.bench import bench_quant

    model, tok, text = tiny
    doc = bench_quant(model, tok, text, text, cells=(("w4a4", "none"),), windows_n=2, ctx=32, repeats=2,
                      batch_size=2, kld=True, log=lambda m: None)
    assert set(doc["seconds"]) == {"fp", "w4a4+none", "w4a4+none+kld"} and set(doc["ratio"]) == {"w4a4+none"}
    assert_best_and_ratios(doc, [(doc["kld_cost"]["w4a4+none"], "w4a4+none+kld", "w4a4+none")])
    ref = doc["kld_reference"]
    assert ref["positions"] == 2 * 31 and 0 < ref["bytes"] < ref["full_logits_bytes"]
    assert doc["kld_mean"]["w4a4+none"] > 0 and doc["ppl"]["w4a4+none+kld"] == doc["ppl"]["w4a4+none"]


def test_spinquant_training_time_and_memory_on_a_tiny_model(tiny):
    from qsink.bench import bench_spinquant, peak_rss_mib

    model, tok, text = tiny
    doc = bench_spinquant(model, tok, text, scheme="w4a4", steps=3, calib=2, ctx=32, log=lambda m: None)
    assert doc["steps"] == 3 and len(doc["loss_curve"]) == 3 and doc["calibration_windows"] == 2
    assert doc["s_per_step"] == pytest.approx(doc["train_s"] / 3) and 0 < doc["train_s"] <= doc["quantize_s"]
    assert doc["max_orthogonality_error"] < 1e-5
    if sys.platform == "linux":  # the peak since the training began: below the process's peak since it started
        assert 0 < doc["peak_rss_during_mib"] <= peak_rss_mib() + 1
