"""``qsink bench matrix`` on a tiny checkpoint: every planned cell runs, each with its time split and a plain-forward
floor; the cells that can take the shared calibration statistics do (no timing is asserted)."""

from qsink.bench import bench_matrix
from qsink.evaluate.settings import EvalSettings


def test_bench_matrix_runs_every_cell_with_its_split(tiny_model_dir):
    settings = EvalSettings(ctx=32, max_tokens=4 * 32, calib=2, profile_samples=2)
    doc = bench_matrix(str(tiny_model_dir), ["w8a8-static", "w4a16"], ["none", "token-keep", "smoothquant"],
                       settings=settings, log=lambda m: None)
    cells = {r["cell"]: r for r in doc["per_cell"]}
    # w4a16 quantizes no activations: token-keep and smoothquant are dropped for it, with their reasons
    assert set(cells) == {"fp", "w8a8-static", "w8a8-static+token-keep", "w8a8-static+smoothquant", "w4a16"}
    assert len(doc["dropped"]) == 2 and all(r["status"] == "ok" for r in cells.values())
    assert cells["w8a8-static"]["calibration"] == "shared" and cells["w8a8-static+token-keep"]["calibration"] == "shared"
    assert cells["w8a8-static+smoothquant"]["calibration"] == "own pass"  # smoothing changes the inputs
    assert cells["w4a16"]["calibration"] == "none" and all(r["sqnr_s"] < 1e-3 for r in cells.values())
    assert all(r["plain_forward_s"] > 0 and r["evaluation_s"] > 0 for r in cells.values())
    assert doc["floor_s"] == sum(r["plain_forward_s"] for r in cells.values()) + doc["floor_calibration_forward_s"]
    assert doc["floor_calibration_forward_s"] > 0
    assert doc["matrix_s"] > 0 and doc["ratio"] == doc["matrix_s"] / doc["floor_s"]


def test_bench_dtype_compares_each_cell_with_itself_in_fp32(tiny_model_dir):
    """fp in fp32 against the fp32 reference has KLD 0 exactly; bf16 drifts a little, for every cell."""
    from qsink.bench import bench_dtype
    from qsink.data.text import Text
    from qsink.models import load
    from tests.conftest import SAMPLE_TEXT

    m, tok = load(str(tiny_model_dir), log=lambda s: None)
    text = Text("s", SAMPLE_TEXT * 4, "0")
    doc = bench_dtype(m, tok, text, text, cells=(("fp", "none"), ("w8a8", "none")), windows_n=2, ctx=32, log=lambda s: None)
    fp, w8 = doc["cells"]
    assert fp["cell"] == "fp" and fp["fp32"]["kld_vs_fp32_fp"] == 0 and fp["fp32"]["same_top_vs_fp32_fp"] == 1
    assert 0 < fp["bf16"]["kld_vs_fp32_fp"] < 0.05 and abs(fp["ppl_drift_pct"]) < 5
    assert w8["fp32"]["kld_vs_fp32_fp"] > 0 and w8["bf16"]["ppl"] > 1


def test_bench_advise_times_the_advisor_against_a_matrix(tiny_model_dir):
    """Cold advice (its measurements and records in a fresh directory) and a matrix of the same model, in one run."""
    from qsink.bench import bench_advise

    settings = EvalSettings(ctx=32, max_tokens=4 * 32, calib=2, profile_samples=0)
    doc = bench_advise(str(tiny_model_dir), budgets=(10.0,), families=("int",), settings=settings,
                       matrix_schemes=["w8a8", "w4a16"], matrix_handling=["none"], log=lambda m: None)
    (run,) = doc["runs"]
    assert run["verified_kld"] <= 10.0 and run["measure_s"] > 0 and run["verify_s"] > 0 and run["rounds"] == 1
    assert doc["matrix_cells"] == 3 and doc["ratio"] == doc["advise_s"] / doc["matrix_s"]
    assert doc["advise_s"] >= run["measure_s"] + run["verify_s"]
