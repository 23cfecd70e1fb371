"""qsink's fake quantization against bitsandbytes' real kernels on the same layer.

Tolerance: bitsandbytes casts activations to fp16 before its int8 quantizer, so qsink is given the
same fp16-rounded input; its int8 codes still differ by one step for about 1% of entries (measured
here: a 0.17% relative difference between the outputs against a 0.85% quantization error on a
576 -> 384 layer). So for int8 we require (a) both errors against fp to agree within
5% and (b) the two outputs to differ by less than a quarter of the quantization error itself. The
4-bit weight formats use identical level tables (tested in test_primitives): bitsandbytes'
dequantized weights must equal qsink's fake-quantized ones exactly. Where its matmul computes in
fp32 the outputs agree to float rounding; on CPUs with AVX512-BF16 its fused kernel computes in bf16
(``kernel_dtype_4bit``), so there the outputs may differ by bf16 rounding of inputs and products.
"""

import copy

import pytest
import torch

from qsink.errors import QsinkError
from qsink.quant import get_scheme, quantize_
from qsink.quant.qlinear import QLinear, QuantContext

bnb_backend = pytest.importorskip("qsink.quant.backends.bnb")
pytest.importorskip("bitsandbytes")


def _layer_and_input(outlier: bool):
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 384)
    x = torch.randn(4, 64, 576)
    if outlier:
        x[..., [5, 300]] *= 40  # two outlier feature columns, as in LLM.int8's setting
    return lin, x


def _rel(a, b, ref):
    return float((a - b).norm() / ref.norm())


@pytest.mark.parametrize("handling, outlier", [("none", False), ("llm-int8", True)])
def test_int8_matches_real_kernel(handling, outlier):
    lin, x = _layer_and_input(outlier)
    s = get_scheme("w8a8")
    q = QLinear.from_float(lin, "t", QuantContext(), s.weight, s.act, outlier_threshold=6.0 if handling == "llm-int8" else None)
    q.outlier_weights_fp = False  # bitsandbytes keeps no fp16 weights in inference: outlier columns use int8 weights too
    real = bnb_backend.bnb_linear(lin, "int8", 6.0 if handling == "llm-int8" else 0.0)
    with torch.no_grad():
        # like for like: the kernel sees fp16-rounded activations, so qsink gets the same input
        y_fp, y_q, y_bnb = lin(x), q(x.half().float()), real(x).float()
    err_q, err_bnb = _rel(y_q, y_fp, y_fp), _rel(y_bnb, y_fp, y_fp)
    assert err_q == pytest.approx(err_bnb, rel=0.05)
    # with llm-int8 bitsandbytes also runs the outlier columns' matmul in fp16 (measured: the outputs
    # differ by ~half the quantization error there), so that case gets a looser bound
    assert _rel(y_q, y_bnb, y_fp) < (0.25 if handling == "none" else 0.6) * err_q
    if handling == "llm-int8":  # the decomposition matters on this input, in both implementations
        plain = QLinear.from_float(lin, "t", QuantContext(), s.weight, s.act)
        with torch.no_grad():
            assert _rel(plain(x), y_fp, y_fp) > 2 * err_q


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_weights_match_real_kernel(kind):
    lin, x = _layer_and_input(False)
    s = get_scheme(kind)
    q = QLinear.from_float(lin, "t", QuantContext(), s.weight, s.act)
    real = bnb_backend.bnb_linear(lin, kind, None)
    import bitsandbytes.functional as F

    with torch.no_grad():
        dequantized = F.dequantize_4bit(real.weight.data, real.weight.quant_state)
        assert torch.equal(dequantized, s.weight.fake(lin.weight))  # the same levels and scales, bit for bit
        y_q, y_bnb = q(x), real(x)
    if bnb_backend.kernel_dtype_4bit("cpu") == "float32":
        assert torch.allclose(y_q, y_bnb, rtol=1e-4, atol=1e-4)
    else:  # bf16 inputs (8 mantissa bits) over 576 products: about 2^-8 / sqrt(3) of the output's scale
        err = float((y_q - y_bnb).norm() / y_q.norm())
        assert 1e-4 < err < 2 ** -8, err


def test_bnb_backend_on_a_model():
    """bitsandbytes' 4-bit blocks run over the flattened weight, qsink's groups along each row: the two
    coincide when in_features is a multiple of 64 (SmolLM2: 576 and 1536), so this model has 64/128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    ids = torch.randint(0, 100, (1, 16))
    fake, real = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(fake, get_scheme("nf4"), "none", sqnr=False)
    report = bnb_backend.to_bnb_(real, "nf4")
    assert report["n_linears"] == 2 * 7
    with torch.no_grad():
        a, b = fake(ids).logits, real(ids).logits
    if report["kernel_dtype"] == "float32":
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    else:  # bf16 matmuls in 14 linears
        assert float((a - b).norm() / a.norm()) < 2 ** -6
    assert report["kernel_dtype"] == bnb_backend.kernel_dtype_4bit("cpu")
    with pytest.raises(QsinkError, match="bnb backend implements"):
        bnb_backend.check("w4a4", "hadamard")
