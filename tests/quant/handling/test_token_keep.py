"""Token-keep directly, on the planted-spike model: it keeps exactly the positions and tokens that
were planted, marks exactly those tokens at run time, leaves their rows unquantized, and keeps them
out of the static activation scales."""

import pytest
import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows
from qsink.quant import get_scheme, quantize_
from qsink.quant.apply import kept_token_fraction
from qsink.quant.qlinear import QLinear, QuantContext
from qsink.evaluate.perplexity import perplexity
from tests.conftest import MARKER_CH, SAMPLE_TEXT, make_tokenizer, planted_spike_model


@pytest.fixture(scope="module")
def btok():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def bcalib(btok):
    return make_windows(btok, Text("c", SAMPLE_TEXT, "0"), ctx=32, max_tokens=3 * 31)


def test_token_keep_rows_are_not_quantized():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(1, 6, 16)
    ctx = QuantContext()
    s = get_scheme("w4a4")
    q = QLinear.from_float(lin, "t", ctx, s.weight, s.act)
    ctx.keep_mask = torch.tensor([[True, False, False, False, False, True]])
    y = q(x)
    exact = torch.nn.functional.linear(x, q.weight_q, lin.bias)
    assert torch.allclose(y[0, [0, 5]], exact[0, [0, 5]], atol=1e-6)
    assert not torch.allclose(y[0, 1:5], exact[0, 1:5], atol=1e-4)


def test_token_keep_finds_spike_positions(btok, bcalib):
    m = planted_spike_model(btok, 1, 4)
    report = quantize_(m, get_scheme("w8a8-static"), "token-keep", bcalib, btok)
    assert report["handling"]["positions"] == [0]
    assert report["handling"]["token_ids"] == []  # the marker is in BOS's embedding only
    perplexity(m, btok, bcalib)
    kept = kept_token_fraction(m)
    assert kept["kept_tokens"] == bcalib.n_windows and kept["fraction"] == pytest.approx(1 / 32)


def test_token_keep_keeps_a_planted_spike_token_wherever_it_occurs(btok):
    """Plant the marker in the comma's embedding too: every comma then carries the spike, at whatever
    position, so the comma is kept as a token (besides position 0), and the run marks BOS plus every comma."""
    comma = btok.convert_tokens_to_ids(",")
    assert comma != btok.unk_token_id
    m = planted_spike_model(btok, 1, 4)
    with torch.no_grad():
        m.model.embed_tokens.weight[comma, MARKER_CH] = 1.0
    bcalib = make_windows(btok, Text("c", SAMPLE_TEXT, "0"), ctx=32, max_tokens=8 * 31)
    ids = bcalib.input_ids
    n_comma = int((ids == comma).sum())
    assert n_comma >= 4 and len(set((ids == comma).nonzero()[:, 1].tolist())) >= 3  # commas at several positions
    report = quantize_(m, get_scheme("w8a8"), "token-keep", bcalib, btok, sqnr=False)
    assert report["handling"]["positions"] == [0]
    assert report["handling"]["token_ids"] == [comma] and report["handling"]["tokens"] == [","]
    perplexity(m, btok, bcalib)
    kept = kept_token_fraction(m)
    assert kept["seen_tokens"] == ids.numel()
    assert kept["kept_tokens"] == bcalib.n_windows + n_comma  # BOS at position 0, and every comma


def test_kept_tokens_do_not_set_static_scales(btok, bcalib):
    """w8a8-static: q_proj's per-tensor scale is the absmax of its input over the tokens that are
    quantized (all but position 0), not the spike's."""
    m = planted_spike_model(btok, 1, 4)
    seen = []
    h = m.model.layers[2].input_layernorm.register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
    with torch.no_grad():
        m(input_ids=bcalib.input_ids)
    h.remove()
    x = seen[0].abs()  # (B, T, D): layer 2's q_proj input on the fp model, where the spike sits at position 0
    assert float(x[:, 0].max()) > 1.5 * float(x[:, 1:].max())  # the normalized spike (sqrt(D)) tops the rest
    quantize_(m, get_scheme("w8a8-static"), "token-keep", bcalib, btok, sqnr=False)
    q = m.model.layers[2].self_attn.q_proj
    assert float(q.act_scale) == pytest.approx(float(x[:, 1:].max()) / 127, rel=1e-5)


def test_kept_tokens_are_counted_on_the_chunked_perplexity_path(btok, bcalib, monkeypatch):
    """The chunked head runs only the base model: the keep mask must still follow each batch's ids
    (it is set on the token embedding), so the chunked and the full path keep the same tokens and give
    the same perplexity, and nothing stale from calibration is applied."""
    import copy

    from qsink.evaluate import perplexity as ppl_mod
    from qsink.quant.apply import kept_token_fraction
    from tests.conftest import tiny_gemma3

    model = tiny_gemma3(btok)
    windows = make_windows(btok, Text("s", SAMPLE_TEXT, "0"), ctx=32, max_tokens=4 * 31)
    opts = {"massive_abs": 1e-3, "massive_ratio": 1.5}  # loose thresholds: some positions and tokens are kept
    results = []
    for chunked in (False, True):
        q = copy.deepcopy(model)
        quantize_(q, get_scheme("w8a8-static"), "token-keep", bcalib, btok, options=opts, sqnr=False)
        monkeypatch.setattr(ppl_mod, "LOGIT_BYTES", 4 * len(btok) * 7 if chunked else ppl_mod.LOGIT_BYTES)
        ppl = perplexity(q, btok, windows, batch_size=2).ppl
        results.append((ppl, kept_token_fraction(q)))
    (ppl_full, kept_full), (ppl_chunked, kept_chunked) = results
    assert kept_full["seen_tokens"] == kept_chunked["seen_tokens"] == windows.input_ids.numel()
    assert kept_full == kept_chunked and 0 < kept_full["kept_tokens"] < kept_full["seen_tokens"]
    assert ppl_chunked == pytest.approx(ppl_full, rel=1e-6)
