"""Benchmarks: the peak-RSS stamp against the kernel's own figure, and a tiny run of the ratio code."""

import json
import sys

import pytest
import torch


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


def test_quant_ratio_on_a_tiny_model(sample_text_file):
    from qsink.bench import bench_quant
    from qsink.data.corpora import load_text_file
    from qsink.data.windows import make_windows
    from qsink.evaluate.perplexity import perplexity
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.tokenizer import train_tokenizer

    text = load_text_file(sample_text_file)
    tok = train_tokenizer([text], 300, log=lambda m: None)
    torch.manual_seed(0)
    model = QsinkForCausalLM(QsinkConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         bos_token_id=tok.bos_token_id)).eval()
    doc = bench_quant(model, tok, text, text, cells=(("w8a8", "none"), ("w4a4", "none")), windows_n=2, ctx=32, repeats=2,
                      batch_size=2, log=lambda m: None)
    assert set(doc["ratio"]) == {"w8a8+none", "w4a4+none"} and all(v > 0 for v in doc["ratio"].values())
    assert all(len(v) == 2 for v in doc["seconds"].values())
    # the fp side is the model untouched: its perplexity is what qsink's evaluator gives directly
    windows = make_windows(tok, text, 32, max_tokens=2 * 32)
    assert doc["ppl"]["fp"] == pytest.approx(perplexity(model, tok, windows, 2).ppl, rel=1e-6)
    assert doc["ppl"]["w4a4+none"] != doc["ppl"]["fp"]  # the quantized copies are really quantized


def test_train_ratio_on_a_tiny_recipe(sample_text_file):
    from qsink.bench import bench_train
    from qsink.train import TrainRecipe

    r = TrainRecipe(name="tiny", data=[f"file:{sample_text_file}"], val_data=f"file:{sample_text_file}", vocab_size=300,
                    seq_len=32, batch_size=4, warmup=1, eval_batches=1, threads=1,
                    model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    doc = bench_train(r, steps=3, log=lambda m: None)
    assert doc["qsink_tokens_per_s"] > 0 and doc["plain_loop_tokens_per_s"] > 0
    assert doc["ratio"] == pytest.approx(doc["qsink_tokens_per_s"] / doc["plain_loop_tokens_per_s"])
    assert doc["matmul_peak_gflops"] > 0 and 0 < doc["mfu"]
