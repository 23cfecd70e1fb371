"""The profiler on the real SmolLM2-135M, checked against transformers' own hidden states."""

import pytest
import torch

from qsink.data import load_corpus
from qsink.data.windows import make_windows
from qsink.measure.collect import profile
from qsink.measure.options import ProfileSettings

pytestmark = pytest.mark.slow


def test_profile_agrees_with_hidden_states(smollm2):
    model, tok = smollm2
    windows = make_windows(tok, load_corpus("austen", "test"), ctx=128, max_tokens=2 * 128)
    p = profile(model, tok, windows, ProfileSettings(attn_windows=1)).to_dict()
    with torch.inference_mode():
        hs = model(input_ids=windows.input_ids, output_hidden_states=True).hidden_states
    L = model.config.num_hidden_layers
    assert p["n_layers"] == L and len(p["layers"]) == L + 1
    for l in range(L):  # hidden_states[L] is after the final norm; the profile's h_L is before it
        assert p["layers"][l]["top1"] == pytest.approx(float(hs[l].abs().max()), rel=1e-5)
    s = p["summary"]
    assert s["spike_magnitude"] >= max(float(hs[l].abs().max()) for l in range(L)) * (1 - 1e-5)
    assert 0.0 <= s["sink_ratio"] <= 1.0 and len(p["attention"]["alpha"]) == L
    assert len(p["linear_inputs"]) == 7 * L  # q, k, v, o, gate, up, down in every block
