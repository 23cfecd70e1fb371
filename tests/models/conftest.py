"""Fixtures of the model-family tests: a BOS tokenizer, evaluation and calibration windows, and a
reference fake quantizer written out independently of qsink's."""

import pytest
import torch

from tests.conftest import family_windows, make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def data(tok):
    return family_windows(tok)


def int_fake_per_group(x, bits, group):
    """Symmetric absmax int quantization in groups of ``group`` along the last dim, written out here."""
    qmax = 2 ** (bits - 1) - 1
    g = x.reshape(*x.shape[:-1], -1, group)
    scale = g.abs().amax(dim=-1, keepdim=True) / qmax
    return (torch.round(g / scale).clamp(-qmax - 1, qmax) * scale).reshape(x.shape)
