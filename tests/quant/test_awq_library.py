"""qsink's AWQ scale search against AutoAWQ's on the same layer group and calibration data.

AutoAWQ is an optional, heavy dependency (it pins old transformers in its metadata and pulls datasets and
triton), so this check runs where it is installed, in a separate environment, e.g.::

    python -m venv /tmp/awqlib
    /tmp/awqlib/bin/pip install torch==2.13.0 transformers==<qsink's version> accelerate datasets zstandard pytest
    /tmp/awqlib/bin/pip install --no-deps autoawq==0.2.9
    PYTHONPATH=. /tmp/awqlib/bin/python -m pytest tests/quant/test_awq_library.py -s

(``torch==2.13.0`` from a CPU index; ``--no-deps`` keeps AutoAWQ from pulling triton and a CUDA torch.)
llm-compressor's AWQModifier runs the same grid search, but only inside its compression session with
compressed-tensors observers attached to the layers, so AutoAWQ's quantizer is the one called here.

Both search ``s = mean|x|^alpha`` (AutoAWQ with ``duo_scaling=False``; its default also divides by the
weights' normalised column means) over alpha in {0, 0.05, ..., 0.95} on the group's output. The two do not
quantize identically: AutoAWQ's asymmetric range is [min(w), max(w)] of each group, ours [min(w, 0),
max(w, 0)]. So each method's chosen scales are scored with its own quantizer, against its own
round-to-nearest: ours within 15 % of the library's output error, and both at most round-to-nearest's.
Measured with AutoAWQ 0.2.9 (torch 2.13 CPU): the same alpha and the same error to four digits, since every
group here spans zero (gate/up -> MLP output: 0.001145 against round-to-nearest's 0.001907; one linear:
0.00316 against 0.004669).
"""

import pytest
import torch
import torch.nn.functional as F

from qsink.quant.handling.awq import search_scale
from qsink.quant.schemes import QuantFormat, per_group

quantizer = pytest.importorskip("awq.quantize.quantizer", reason="AutoAWQ not installed (see module docstring)")

W4G = QuantFormat("int", 4, False, per_group(128))
HIDDEN, FFN = 256, 512


def calibration_input() -> torch.Tensor:
    """(8, 64, HIDDEN) normed activations with a few salient channels, as a norm's output looks."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, HIDDEN)
    x[..., [3, 77, 200]] *= torch.tensor([20.0, 8.0, 12.0])
    return x


def library_quantizer():
    q = object.__new__(quantizer.AwqQuantizer)  # no model, tokenizer or calibration download
    q.w_bit, q.group_size, q.zero_point, q.duo_scaling = 4, 128, True, False
    q.max_chunk_memory, q.n_parallel_calib_samples = 1 << 30, None
    return q


def mlp_group():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    torch.manual_seed(1)
    box = torch.nn.Module()
    box.norm = LlamaRMSNorm(HIDDEN)
    box.mlp = LlamaMLP(LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN))
    return box, box.norm, [box.mlp.gate_proj, box.mlp.up_proj], box.mlp


def linear_group():
    torch.manual_seed(1)
    box = torch.nn.Module()
    box.prev = torch.nn.Linear(HIDDEN, HIDDEN)
    box.lin = torch.nn.Linear(HIDDEN, FFN)
    return box, box.prev, [box.lin], box.lin


@pytest.mark.parametrize("group", [mlp_group, linear_group], ids=["gate_up->mlp output", "single linear"])
@torch.no_grad()
def test_same_output_error_as_autoawq(group):
    box, prev, linears, parent = group()
    x = calibration_input()
    lib = library_quantizer()
    ref = parent(x)
    originals = [lin.weight.detach().clone() for lin in linears]

    def output_error(s: torch.Tensor, quantize) -> float:
        for lin, w in zip(linears, originals):
            lin.weight.copy_(quantize(w * s) / s)
        err = float(F.mse_loss(parent(x), ref))
        for lin, w in zip(linears, originals):
            lin.weight.copy_(w)
        return err

    _, _, s_lib = lib._search_best_scale(box, prev, linears, x, module2inspect=parent)
    alpha, s_ours, _ = search_scale(x.abs().reshape(-1, HIDDEN).mean(dim=0), linears, [W4G] * len(linears),
                                    lambda: [parent(x)])
    lib_q = lambda w: lib.pseudo_quantize_tensor(w)[0]  # noqa: E731
    ours, rtn = output_error(s_ours, W4G.fake), output_error(torch.ones(HIDDEN), W4G.fake)
    theirs, rtn_lib = output_error(s_lib.float(), lib_q), output_error(torch.ones(HIDDEN), lib_q)
    # with the same quantizer the same grid gives the same choice: our scales under AutoAWQ's quantizer
    crossed = output_error(s_ours, lib_q)
    print(f"{group.__name__}: alpha {alpha}; output MSE qsink {ours:.4g} (rtn {rtn:.4g}), AutoAWQ {theirs:.4g} "
          f"(rtn {rtn_lib:.4g}), qsink's scales with AutoAWQ's quantizer {crossed:.4g}")
    assert torch.equal(linears[0].weight, originals[0])
    assert ours <= 1.15 * theirs
    assert ours <= rtn and theirs <= rtn_lib
