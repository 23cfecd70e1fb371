"""A quick regime probe: train a qsink model on Bigram-Backcopy and watch sinks form.

The regime search for a baseline that spikes (recipes/search/README.md) needs many short runs and a
view of *when* a sink appears, not only whether a finished checkpoint has one. This trains
:class:`QsinkForCausalLM` on the ``bb`` language (constant learning rate after warmup, a fresh
random slice of a 4M-token stream per sequence, BOS first) and every ``--every`` steps prints, per
layer, each head's mean attention on BOS from ordinary (non-trigger) queries at positions >= 2 (the
sink score alpha of Gu et al. 2024, arXiv 2410.10781, restricted to the queries that should be
dormant) and the residual stream's largest |h|, its ratio to the layer median, and BOS's ratio.

    python -m qsink.train.explore --ctx 32 --batch 256 --lr 1e-2 --wd 0.1 --minutes 5

Checkpoints are not written: a finding is confirmed by a recipe run through ``qsink train`` and
``qsink measure``.
"""

from __future__ import annotations

import argparse
import time

import torch

from qsink.data.synthetic import SYNTHETIC
from qsink.measure.attention import capture_attention
from qsink.models.family.config import QsinkConfig
from qsink.models.family.modeling import QsinkForCausalLM
from qsink.train.loop import _param_groups


def probe(model, x: torch.Tensor, n_triggers: int) -> tuple[list[list[float]], list[tuple[float, float, float]]]:
    """(alpha per layer and head, (top |h|, top/median, BOS top/median) per layer) on batch ``x``."""
    model.eval()
    weights = []
    try:
        with capture_attention(model, lambda layer, w: weights.append(w)), torch.no_grad():
            out = model(x, output_hidden_states=True)
    finally:
        model.train()
    q = torch.arange(2, x.shape[1])
    dormant = x[:, q] >= n_triggers
    alpha = [[round(float(A[:, h][:, q, 0][dormant].mean()), 3) for h in range(A.shape[1])] for A in weights]
    peaks = []
    for h in out.hidden_states[1:]:
        a = h.abs()
        med = float(a.median())
        peaks.append((round(float(a.max()), 1), round(float(a.max()) / med, 1), round(float(a[:, 0].max()) / med, 1)))
    return alpha, peaks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--wd", type=float, default=0.0, help="AdamW weight decay on matrices (embeddings excluded)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    task = SYNTHETIC["bb"]
    bos = task.n_tokens  # ids 0..n_tokens-1 are the words, the next id is BOS
    stream = torch.from_numpy(task.sample(4_000_000, 11))

    def batch(step: int, B: int, T: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + step)
        starts = torch.randint(0, len(stream) - T, (B,), generator=g).tolist()
        body = torch.stack([stream[s : s + T - 1] for s in starts])
        return torch.cat([torch.full((B, 1), bos), body], 1)

    cfg = QsinkConfig(vocab_size=task.n_tokens + 1, hidden_size=a.hidden, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, max_position_embeddings=max(a.ctx, 64), bos_token_id=bos)
    model = QsinkForCausalLM(cfg)
    opt = torch.optim.AdamW(_param_groups(model, a.wd, decay_embeddings=False), lr=a.lr, betas=(0.9, 0.95))
    held_out = batch(10**8, 64, a.ctx)
    print(vars(a), flush=True)
    t0, step, tokens = time.time(), 0, 0
    while time.time() - t0 < 60 * a.minutes:
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        x = batch(step, a.batch, a.ctx)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        if step % a.every == 0:
            alpha, peaks = probe(model, held_out, task.n_triggers)
            print(f"{a.tag} step {step} tok {tokens / 1e6:.2f}M {time.time() - t0:.0f}s loss {loss.item():.3f} "
                  f"alphaBOS {alpha} (top,top/med,bos/med) {peaks}", flush=True)


if __name__ == "__main__":
    main()
