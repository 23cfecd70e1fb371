"""Token-keep: the spike tokens' activations stay in high precision, all others are quantized.

The spike tokens are found by the profiler (:mod:`qsink.measure`) on the calibration windows:
the positions (in practice position 0) and the token ids (delimiters, at later positions) that hold
massive activations. At evaluation, a hook on the model reads ``input_ids`` and marks those
tokens; every QLinear keeps their rows unquantized. This tests directly the claim that spikes
live on a few tokens ("The Spike, the Sparse and the Sink", arXiv 2603.05498; compare
PrefixQuant, arXiv 2410.05265). The record says how many tokens were kept.
"""

from __future__ import annotations

import torch

from qsink.models.adapter import adapter_for
from qsink.quant.calibration import CalibrationStats, keep_mask
from qsink.quant.handling.base import Handler, needs_acts, register


@register
class TokenKeep(Handler):
    name = "token-keep"
    description = "activations of spike tokens (position 0, delimiters with massive activations) stay fp"
    needs_calibration = True
    keeps_tokens = True  # static scales come from the rows it does not keep

    def __init__(self, massive_abs: float = 100.0, massive_ratio: float = 1000.0):
        self.massive_abs, self.massive_ratio = float(massive_abs), float(massive_ratio)
        self.positions: list[int] = []
        self.token_ids: list[int] = []
        self.token_texts: list[str] = []
        self.ctx = None

    def check(self, scheme) -> None:
        needs_acts(self, scheme)

    def prepare(self, model, adapter, calib, scheme) -> None:
        # the spike tokens of the fp model on the calibration windows: shared by the model's cells, or found here
        stats = self.shared if self.shared is not None else CalibrationStats(model, adapter, calib, tokenizer=self.tokenizer)
        spikes = stats.spike_tokens(self.massive_abs, self.massive_ratio)
        self.positions, self.token_ids, self.token_texts = spikes["positions"], spikes["token_ids"], spikes["tokens"]

    def install(self, model, ctx) -> list:
        self.ctx = ctx

        def hook(module, args, kwargs):  # on the token embedding, which every forward path calls with the ids
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None or input_ids.dtype not in (torch.long, torch.int):
                ctx.keep_mask = None
                return
            mask = keep_mask(input_ids, self.positions, self.token_ids)
            ctx.keep_mask = mask
            ctx.kept_tokens += int(mask.sum())
            ctx.seen_tokens += mask.numel()

        # not the model's own forward: the chunked perplexity head runs only the base model
        return [adapter_for(model).embedding(model).register_forward_pre_hook(hook, with_kwargs=True)]

    def shared_needs(self, scheme) -> set[str]:
        return {"spikes"} | ({"kept-absmax"} if scheme.act_static else set())

    def report(self) -> dict:
        return {"positions": self.positions, "token_ids": self.token_ids, "tokens": self.token_texts,
                "massive_abs": self.massive_abs, "massive_ratio": self.massive_ratio}
