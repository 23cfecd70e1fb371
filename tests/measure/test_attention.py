"""Attention weights under eager attention, and the active-dormant split built on them."""

import pytest


def test_attention_split_on_uniform_attention(qsink_home):
    """Zero query weights make every head uniform over its causal window: 1/(q+1) on each key."""
    import torch

    from qsink.data.synthetic import load_synthetic
    from qsink.measure.attention import attention_split
    from qsink.models.family import QsinkConfig, QsinkForCausalLM
    from qsink.train.tokenizer import train_tokenizer

    tok = train_tokenizer([load_synthetic("bb", "validation")], 0, log=lambda m: None, kind="word")
    torch.manual_seed(0)
    model = QsinkForCausalLM(QsinkConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         bos_token_id=tok.bos_token_id)).eval()
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    rows = attention_split(model, tok, ctx=32, n_windows=4)
    assert len(rows) == 4 and model.config._attn_implementation != "eager"  # restored
    from qsink.data.windows import make_windows

    ids = make_windows(tok, load_synthetic("bb", "validation"), 32, max_tokens=4 * 31).input_ids
    trig = torch.isin(ids[:, 2:], torch.tensor(tok.convert_tokens_to_ids(["w00", "w01", "w02"])))
    inv = (1.0 / (torch.arange(2, 32) + 1).float()).expand_as(trig)
    for r in rows:
        for key in ("bos", "self", "prev"):
            assert r[f"trigger_{key}"] == pytest.approx(float(inv[trig].mean()), rel=1e-5)
            assert r[f"other_{key}"] == pytest.approx(float(inv[~trig].mean()), rel=1e-5)
