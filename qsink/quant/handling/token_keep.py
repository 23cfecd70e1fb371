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

from qsink.measure.collect import profile
from qsink.measure.options import ProfileSettings
from qsink.models.adapter import adapter_for
from qsink.quant.handling.base import Handler, needs_acts, register


@register
class TokenKeep(Handler):
    name = "token-keep"
    description = "activations of spike tokens (position 0, delimiters with massive activations) stay fp"
    needs_calibration = True

    def __init__(self, massive_abs: float = 100.0, massive_ratio: float = 1000.0):
        self.massive_abs, self.massive_ratio = float(massive_abs), float(massive_ratio)
        self.positions: list[int] = []
        self.token_ids: list[int] = []
        self.token_texts: list[str] = []
        self.ctx = None

    def check(self, scheme) -> None:
        needs_acts(self, scheme)

    def prepare(self, model, adapter, calib, scheme) -> None:
        p = profile(model, self.tokenizer, calib, ProfileSettings(massive_abs=self.massive_abs, massive_ratio=self.massive_ratio,
                                                       attn_windows=0)).to_dict()
        n = calib.n_windows
        # a position or token counts if it is massive in at least half the windows that contain it
        self.positions = sorted(d["position"] for d in p["massive"]["positions"] if d["windows"] * 2 >= n)
        counts = {}
        for w in range(n):
            for t in set(calib.input_ids[w].tolist()):
                counts[t] = counts.get(t, 0) + 1
        self.token_ids = sorted(d["token_id"] for d in p["massive"]["tokens"] if d["windows"] * 2 >= counts.get(d["token_id"], n))
        self.token_texts = [d["token"] for d in p["massive"]["tokens"] if d["token_id"] in self.token_ids]

    def install(self, model, ctx) -> list:
        self.ctx = ctx
        positions, ids = torch.tensor(self.positions, dtype=torch.long), torch.tensor(self.token_ids, dtype=torch.long)

        def hook(module, args, kwargs):  # on the token embedding, which every forward path calls with the ids
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None or input_ids.dtype not in (torch.long, torch.int):
                ctx.keep_mask = None
                return
            mask = torch.isin(input_ids, ids.to(input_ids.device))
            if len(positions):
                pos = positions[positions < input_ids.shape[1]].to(input_ids.device)
                mask[:, pos] = True
            ctx.keep_mask = mask
            ctx.kept_tokens += int(mask.sum())
            ctx.seen_tokens += mask.numel()

        # not the model's own forward: the chunked perplexity head runs only the base model
        return [adapter_for(model).embedding(model).register_forward_pre_hook(hook, with_kwargs=True)]

    def report(self) -> dict:
        return {"positions": self.positions, "token_ids": self.token_ids, "tokens": self.token_texts,
                "massive_abs": self.massive_abs, "massive_ratio": self.massive_ratio}
