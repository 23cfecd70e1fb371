"""Agreement with the fp model (KL divergence, same top, Δp, the perplexity ratio) against known answers:
identical models, hand-built distributions, numpy's own statistics, the exact full-vocabulary value,
and a planted spike whose activations alone are perturbed."""

import copy
import math

import numpy as np
import pytest
import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.errors import QsinkError
from qsink.evaluate import agreement as ag
from qsink.evaluate.agreement import Agreement, Reference, ReferenceBuilder
from qsink.evaluate.perplexity import perplexity
from qsink.quant import get_scheme, quantize_
from tests.conftest import SAMPLE_TEXT, family_windows, make_tokenizer, planted_spike_model, tiny_llama


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def data(tok):
    return family_windows(tok)


@pytest.fixture(scope="module")
def windows(data):
    return data[0]


@pytest.fixture(scope="module")
def calib(data):
    return data[1]


def reference(model, tok, windows, k):
    b = ReferenceBuilder(model, tok, windows, k, ag.reference_identity("m", windows, k, "fp32"))
    perplexity(model, tok, windows, batch_size=2, observers=[b])
    return b.reference()


def agree(model, tok, windows, ref=None, fp=None):
    a = Agreement(windows.n_scored, reference=ref, fp_model=fp, tokenizer=tok, windows=windows)
    perplexity(model, tok, windows, batch_size=2, observers=[a])
    return a


def kl(p, q):
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


# ------------------------------------------------------------------ hand-built distributions


def test_two_token_and_many_token_kld_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    p_logits, q_logits = torch.tensor(np.log(p)[None], dtype=torch.float32), torch.tensor(np.log(q)[None], dtype=torch.float32)
    st = ag.exact_stats(q_logits, p_logits)
    assert float(st["kld"][0]) == pytest.approx(want, abs=1e-6)
    assert float(st["kld_reverse"][0]) == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), abs=1e-6)
    top, ids, rest = ag.topk_reference(p_logits, 2)  # K covers the support: the bucketed value is exact
    assert float(ag.topk_stats(q_logits, top, ids, rest)["kld"][0]) == pytest.approx(want, abs=1e-6)

    rng = np.random.default_rng(0)
    V = 50
    pl, ql = (rng.normal(0, 2, (3, V)).astype(np.float32).astype(np.float64) for _ in range(2))  # fp32-exact inputs
    P = np.exp(pl) / np.exp(pl).sum(1, keepdims=True)
    Q = np.exp(ql) / np.exp(ql).sum(1, keepdims=True)
    got = ag.exact_stats(torch.tensor(ql, dtype=torch.float32), torch.tensor(pl, dtype=torch.float32))
    for r in range(3):
        # terms are fp32 products summed in float64: 1e-6 relative (these KLDs are of order 5 nats)
        assert float(got["kld"][r]) == pytest.approx(kl(P[r], Q[r]), rel=1e-6)
        assert float(got["kld_reverse"][r]) == pytest.approx(kl(Q[r], P[r]), rel=1e-6)


def test_topk_with_rest_bucket_is_exact_on_small_support_and_a_bounded_lower_bound_otherwise():
    rng = np.random.default_rng(1)
    V, K = 60, 8
    pl = rng.normal(0, 2, (4, V))
    pl[:2, 5:] = -1e4  # rows 0-1: P has mass on 5 tokens only
    ql = pl + rng.normal(0, 0.7, (4, V))
    ql[:2, 5:] = rng.normal(0, 1, (2, V - 5))  # Q spreads mass everywhere
    pl, ql = pl.astype(np.float32).astype(np.float64), ql.astype(np.float32).astype(np.float64)  # what the code sees
    P = np.exp(pl - pl.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
    Q = np.exp(ql - ql.max(1, keepdims=True)); Q /= Q.sum(1, keepdims=True)
    top, ids, rest = ag.topk_reference(torch.tensor(pl, dtype=torch.float32), K)
    est = ag.topk_stats(torch.tensor(ql, dtype=torch.float32), top, ids, rest)["kld"].numpy()
    for r in range(4):
        exact = kl(P[r], Q[r])
        if r < 2:
            assert est[r] == pytest.approx(exact, rel=1e-6)  # fp32 logsumexp: ~1e-7 relative
            continue
        in_top = np.zeros(V, bool)
        in_top[ids[r].numpy()] = True
        p_rest, q_rest = P[r][~in_top].sum(), Q[r][~in_top].sum()
        gap = p_rest * kl(P[r][~in_top] / p_rest, Q[r][~in_top] / q_rest)  # the stated bound, computed directly
        assert est[r] <= exact + 1e-6
        assert exact - est[r] == pytest.approx(gap, abs=1e-6)
        assert gap > 1e-4  # a case where the bound matters


def test_summary_statistics_match_numpy():
    rng = np.random.default_rng(2)
    n = 1001
    kld = rng.exponential(0.05, n)
    nll_fp = rng.exponential(2.0, n)
    nll_q = nll_fp + rng.normal(0.1, 0.3, n)
    same = rng.random(n) < 0.8
    kinds = np.zeros(n, np.uint8)
    kinds[:40] |= ag.MASSIVE
    kinds[::50] |= ag.SINK
    kinds[100:200] |= ag.DELIMITER
    s = ag.summarize(kld, kld * 1.1, same, nll_q, nll_fp, kinds)
    assert s["kld"]["mean"] == pytest.approx(kld.mean(), rel=1e-12)
    assert s["kld"]["sem"] == pytest.approx(np.std(kld, ddof=1) / np.sqrt(n), rel=1e-12)
    for q in ag.PERCENTILES:
        assert s["kld"]["percentiles"][f"p{q:g}"] == pytest.approx(np.percentile(kld, q), rel=1e-12)
    assert s["kld"]["median"] == pytest.approx(np.median(kld)) and s["kld"]["max"] == kld.max()
    p = same.mean()
    assert s["same_top"]["p"] == p and s["same_top"]["sem"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    dp = np.exp(-nll_q) - np.exp(-nll_fp)
    assert s["delta_p"]["rms"] == pytest.approx(np.sqrt(np.mean(dp**2))) and s["delta_p"]["mean"] == pytest.approx(dp.mean())
    d = nll_q - nll_fp  # the covariance form equals the standard error of the per-token differences
    assert s["ln_ppl_ratio"] == pytest.approx(d.mean()) and s["ln_ppl_ratio_sem"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(n))
    assert s["nll_correlation"] == pytest.approx(np.corrcoef(nll_q, nll_fp)[0, 1])
    other = kinds == 0
    assert s["by_kind"]["other"]["n"] == other.sum() and s["by_kind"]["massive"]["n"] == 40
    assert s["by_kind"]["other"]["kld_mean"] == pytest.approx(kld[other].mean())
    assert s["by_kind"]["delimiter"]["same_top"] == pytest.approx(same[100:200].mean())
    h = s["kld_histogram"]
    assert sum(h["counts"]) + h["below"] + h["above"] == n


# ------------------------------------------------------------------ on models


def test_identical_models_agree_exactly(tok, windows):
    model = tiny_llama(tok, layers=2)
    ref = reference(model, tok, windows, 16)
    for a in (agree(copy.deepcopy(model), tok, windows, ref=ref), agree(copy.deepcopy(model), tok, windows, fp=model)):
        s = a.summary()
        assert np.all(a.kld == 0) and np.all(a.rkld == 0)
        assert s["same_top"]["p"] == 1.0 and s["delta_p"]["rms"] == 0.0 and s["ln_ppl_ratio"] == 0.0


def test_topk_estimate_against_the_exact_value_on_a_small_vocabulary(tok, windows, calib):
    """A real quantized copy of a 320-token model (its head scaled so that its distributions are peaked, as
    a trained model's are): the exact KLD equals an independent float64 computation from the two models'
    logits; K = the whole vocabulary gives the exact value; K = 16 is below it by exactly the stated gap,
    P's rest mass times the KLD of the two distributions restricted to the rest."""
    model = tiny_llama(tok, layers=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    q = copy.deepcopy(model)
    quantize_(q, get_scheme("w4a4"), "none", calib, tok, sqnr=False)
    exact = agree(q, tok, windows, fp=model)
    with torch.no_grad():
        lp = torch.log_softmax(model(windows.input_ids).logits[:, :-1].double(), -1).reshape(-1, len(tok)).numpy()
        lq = torch.log_softmax(q(windows.input_ids).logits[:, :-1].double(), -1).reshape(-1, len(tok)).numpy()
    P, Q = np.exp(lp), np.exp(lq)
    np.testing.assert_allclose(exact.kld, (P * (lp - lq)).sum(-1), atol=1e-6)
    np.testing.assert_allclose(exact.rkld, (Q * (lq - lp)).sum(-1), atol=1e-6)
    assert exact.kld.mean() > 1e-3  # the quantization is visible
    full = agree(q, tok, windows, ref=reference(model, tok, windows, len(tok)))
    # the top-K path works from fp32 logsumexps (about 1e-7 nats of rounding each side), the exact one not
    np.testing.assert_allclose(full.kld, exact.kld, atol=5e-6)
    np.testing.assert_allclose(full.rkld, exact.rkld, atol=5e-6)
    np.testing.assert_allclose(full.nll_fp, exact.nll_fp, atol=1e-5)
    assert np.array_equal(full.same, exact.same) and np.array_equal(full.kinds, exact.kinds)
    ref16 = reference(model, tok, windows, 16)
    est = agree(q, tok, windows, ref=ref16)
    rest = np.ones_like(P, dtype=bool)
    np.put_along_axis(rest, ref16.top_ids.astype(np.int64), False, axis=1)
    p_rest, q_rest = (P * rest).sum(-1), (Q * rest).sum(-1)
    gap = np.array([p_rest[i] * kl(P[i][rest[i]] / p_rest[i], Q[i][rest[i]] / q_rest[i]) for i in range(len(P))])
    assert np.all(est.kld <= exact.kld + 1e-6)
    np.testing.assert_allclose(exact.kld - est.kld, gap, atol=1e-5)
    assert gap.mean() > 1e-4  # a case where the bound matters


def test_a_perturbed_spike_token_shows_in_the_massive_bucket_only(tok, windows):
    """The planted spike sits on BOS (position 0) from block 1 to block 4; attention writes nothing, so
    noise added to that position's residual in block 2 changes only its own prediction."""
    model = planted_spike_model(tok, inject_block=1, cancel_block=5)
    ref = reference(model, tok, windows, 32)
    massive = (ref.kinds & ag.MASSIVE) > 0
    rows = np.arange(windows.n_scored) % (windows.ctx - 1)
    assert np.array_equal(massive, rows == 0)  # found on the windows themselves: exactly the BOS positions
    q = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(q.config.hidden_size, generator=g) * 0.5

    def perturb(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, 0] += noise
        return (h, *out[1:]) if isinstance(out, tuple) else h

    q.model.layers[2].register_forward_hook(perturb)
    s = agree(q, tok, windows, ref=ref).summary()
    assert s["by_kind"]["massive"]["n"] == windows.n_windows and s["by_kind"]["massive"]["kld_mean"] > 1e-3
    assert s["by_kind"]["other"]["n"] > 0 and s["by_kind"]["other"]["kld_mean"] < 1e-9
    assert s["by_kind"]["sink"]["kld_mean"] == pytest.approx(s["by_kind"]["massive"]["kld_mean"])


# ------------------------------------------------------------------ the stored reference


def test_reference_round_trip_and_damage(tok, windows, tmp_path):
    model = tiny_llama(tok, layers=2)
    ref = reference(model, tok, windows, 8)
    path = ref.save(tmp_path / "r.npz")
    back = Reference.load(path, ref.key)
    for name in ("top_logp", "top_ids", "rest_logp", "nll", "argmax", "kinds"):
        assert np.array_equal(getattr(back, name), getattr(ref, name)), name
    assert ref.nbytes() < windows.n_scored * len(tok) * 4  # far below the full logits
    with pytest.raises(QsinkError, match="other settings"):
        Reference.load(path, "another-key")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(QsinkError, match=r"cut\.npz cannot be read.*delete"):
        Reference.load(tmp_path / "cut.npz", ref.key)
    # one array's values changed, the file still a valid archive: the checksum catches it
    arrays = {k: getattr(ref, k) for k in ("top_logp", "top_ids", "rest_logp", "nll", "argmax", "kinds")}
    with np.load(path) as z:
        header = z["header"]
    arrays["nll"] = arrays["nll"] + 1.0
    np.savez(tmp_path / "edited.npz", header=header, **arrays)
    with pytest.raises(QsinkError, match="nll does not match its checksum"):
        Reference.load(tmp_path / "edited.npz", ref.key)


def test_reference_identity_changes_with_windows_ctx_and_k(tok, windows):
    other = make_windows(tok, Text("s", SAMPLE_TEXT, "0"), ctx=16, max_tokens=6 * 15)
    keys = {ag.reference_key(ag.reference_identity("m", w, k, "fp32")) for w, k in ((windows, 32), (windows, 16), (other, 32))}
    assert len(keys) == 3
    with pytest.raises(QsinkError, match="other windows"):
        Agreement(windows.n_scored + 1, reference=reference(tiny_llama(tok, layers=1), tok, windows, 4))
