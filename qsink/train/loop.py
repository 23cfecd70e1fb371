"""The training loop: AdamW, warmup + cosine, clipping, periodic validation, resumable checkpoints.

Determinism: the batch of step ``s`` is drawn from a generator seeded with ``(seed, s)``, so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would; model and optimizer
state are restored from safetensors. On CPU (fp32) a resumed run matches an uninterrupted one.

The output directory is a Hugging Face checkpoint (``config.json``, ``model.safetensors``, the
tokenizer) that ``qsink measure`` and ``qsink evaluate`` load; ``trainer_state.json`` and
``optimizer.safetensors`` beside it make it resumable. Checkpoints are written to a temporary
directory and renamed, so an interrupted write never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from qsink.data.resolve import resolve_data
from qsink.data.windows import tokenize
from qsink.errors import QsinkError
from qsink.models.checkpoint import staged_checkpoint
from qsink.models.family import QsinkConfig, QsinkForCausalLM
from qsink.train.recipe import TrainRecipe
from qsink.train.tokenizer import train_tokenizer


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    train_loss: float
    val_loss: float | None
    tokens_per_s: float
    history: list


def loss_window_labels(ids: torch.Tensor, loss_min: int, loss_max: int | None) -> torch.Tensor:
    """Labels equal to ``ids`` on target positions in [loss_min, loss_max], -100 elsewhere."""
    labels = ids.clone()
    T = ids.shape[1]
    pos = torch.arange(T, device=ids.device)
    outside = (pos < loss_min) | (pos > (loss_max if loss_max is not None else T))
    labels[:, outside] = -100
    return labels


def same_recipe(saved: dict, r: TrainRecipe) -> bool:
    """Whether a checkpoint's saved recipe is ``r``; keys added to recipes since then count at their default."""
    defaults = TrainRecipe(variant=r.variant).to_dict()
    return {**defaults, **saved} == {**defaults, **r.to_dict()} and all(k in defaults for k in saved)


def lr_at(step: int, r: TrainRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    progress = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class TokenStream:
    """All training text as one token tensor; batches are random slices, each prefixed with BOS."""

    def __init__(self, ids: torch.Tensor, bos: int):
        self.ids, self.bos = ids, bos

    def batch(self, step: int, seed: int, B: int, T: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.ids) - T, (B,), generator=g)
        body = torch.stack([self.ids[s : s + T - 1] for s in starts.tolist()])
        return torch.cat([torch.full((B, 1), self.bos, dtype=torch.long), body.long()], dim=1)

    def fixed(self, n: int, T: int) -> torch.Tensor:
        per = T - 1
        n = min(n, len(self.ids) // per)
        body = self.ids[: n * per].view(n, per).long()
        return torch.cat([torch.full((n, 1), self.bos, dtype=torch.long), body], dim=1)


def _param_groups(model, weight_decay, decay_embeddings: bool = True):
    """Matrices decay; vectors (norm gains, scalars) never do; embeddings only if ``decay_embeddings``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and (decay_embeddings or "embed" not in name) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_tensors(model, opt) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"{names[id(p)]}::{k}"] = v.detach().clone().reshape(-1) if v.dim() == 0 else v.detach().clone()
    return out


def _load_optimizer(model, opt, tensors: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        st = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"{n}::{k}"
            if key in tensors:
                t = tensors[key]
                st[k] = t.reshape(()) if k == "step" else t.to(p.device)
        if st:
            opt.state[p] = st


def _refuse_foreign(out: Path) -> None:
    """Raise :class:`QsinkError` if ``out`` exists and is neither an empty directory nor a qsink checkpoint."""
    if out.exists() and not out.is_dir():
        raise QsinkError(f"--out {out} is a file, not a checkpoint directory; choose another --out (nothing was changed)")
    if out.is_dir() and not (out / "trainer_state.json").is_file() and any(out.iterdir()):
        raise QsinkError(f"--out {out} holds files that are not a qsink training checkpoint; choose a new or empty "
                         f"directory as --out (nothing was changed)")


def save_checkpoint(out: Path, model, tok, opt, state: dict) -> None:
    """Write a resumable checkpoint to ``out`` through a temporary directory and renames.

    The previous checkpoint in ``out`` is renamed to a fresh hidden directory beside it and deleted
    only once the new one is in place; anything else at ``out`` is refused, never replaced.

    Raises:
        QsinkError: ``out`` is a file, or a non-empty directory without ``trainer_state.json``.
    """
    out = out.resolve() if out.is_symlink() else out  # write into the link's target; the link stays
    _refuse_foreign(out)
    old = None
    try:
        with staged_checkpoint(out, model, tok) as tmp:
            save_file(_optimizer_tensors(model, opt), tmp / "optimizer.safetensors")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            _refuse_foreign(out)  # again: the directory may have changed while the weights were written
            if out.exists():
                old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))  # a fresh name: clobbers nothing
                os.replace(out, old)  # a directory may replace an empty one
            os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if old is not None and old.is_dir() and not any(old.iterdir()):
            old.rmdir()  # a rename that failed leaves the fresh name empty; a moved checkpoint is kept


@torch.no_grad()
def evaluate_loss(model, batches: torch.Tensor, r: TrainRecipe, device) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(batches), r.batch_size):
        x = batches[i : i + r.batch_size].to(device)
        loss = model(input_ids=x, labels=loss_window_labels(x, r.loss_min, r.loss_max)).loss
        total += float(loss) * len(x)
        n += len(x)
    model.train()
    return total / max(n, 1)


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under torchrun / accelerate (DDP), else (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def train(r: TrainRecipe, out: Path, resume: bool = False, device: str = "cpu", log: Callable[[str], None] = print,
          on_step: Callable[[int, float, float], None] | None = None, stop_after: int | None = None) -> TrainResult:
    """Train recipe ``r`` into ``out``; ``stop_after`` ends early at that step (tests, time budgets).

    Under torchrun (``WORLD_SIZE > 1``) each rank computes a slice of the same global batch of
    ``batch_size`` sequences and DDP averages the gradients, so the recipe means the same thing on
    one process or many; rank 0 writes checkpoints.
    """
    out = Path(out)
    rank, world, device = _distributed(device)
    if r.batch_size % world:
        raise QsinkError(f"batch_size {r.batch_size} does not split over {world} processes; use a multiple of {world}")
    if rank:
        log = lambda m: None  # noqa: E731  (one voice)
    if r.threads:
        torch.set_num_threads(r.threads)
    state_file = out / "trainer_state.json"
    if resume and not state_file.is_file():
        raise QsinkError(f"--resume: {out} holds no checkpoint to resume from; drop --resume to start fresh")
    if not resume and state_file.is_file():
        raise QsinkError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    _refuse_foreign(out)
    texts = [resolve_data(d, None, log=log) for d in r.data]
    tok = train_tokenizer(texts, r.vocab_size, log=log, kind=r.tokenizer)
    stream = TokenStream(torch.tensor([t for text in texts for t in tokenize(tok, text.text)], dtype=torch.int32), tok.bos_token_id)
    val = TokenStream(torch.tensor(tokenize(tok, resolve_data(r.val_data, None, log=log).text), dtype=torch.int32), tok.bos_token_id)
    val_batches = val.fixed(r.eval_batches * r.batch_size, r.seq_len)
    torch.manual_seed(r.seed)
    cfg = QsinkConfig(vocab_size=len(tok), max_position_embeddings=max(r.seq_len, 64), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **r.model_config())
    model = QsinkForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(_param_groups(model, r.weight_decay, r.decay_embeddings), lr=r.lr, betas=tuple(r.betas), foreach=False)
    step, history = 0, []
    if resume:
        state = json.loads(state_file.read_text())
        if not same_recipe(state["recipe"], r):
            raise QsinkError(f"{out} was trained with a different recipe; resume with the same recipe or use another --out")
        model.load_state_dict(load_file(out / "model.safetensors"), strict=False)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        _load_optimizer(model, opt, load_file(out / "optimizer.safetensors"))
        step, history = state["step"], state["history"]
        log(f"resuming {out} at step {step}")
    model.train()
    core = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(core, device_ids=[torch.device(device).index] if str(device).startswith("cuda") else None)
    per_rank = r.batch_size // world
    use_bf16 = str(device).startswith("cuda")
    t0, tokens, loss_val, val_loss = time.perf_counter(), 0, float("nan"), None
    end = min(r.steps, stop_after) if stop_after else r.steps
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        x = stream.batch(step, r.seed, r.batch_size, r.seq_len)[rank * per_rank : (rank + 1) * per_rank].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=x, labels=loss_window_labels(x, r.loss_min, r.loss_max)).loss
        if not torch.isfinite(loss):
            raise QsinkError(f"training diverged at step {step} (loss {float(loss)}); lower lr or raise warmup. "
                             f"The last checkpoint in {out} is intact.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(core.parameters(), r.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel() * world
        loss_val = float(loss.detach())
        tps = tokens / (time.perf_counter() - t0)
        if on_step:
            on_step(step, loss_val, tps)
        if step % r.eval_every == 0 or step == r.steps:
            val_loss = evaluate_loss(core, val_batches, r, device)
            history.append({"step": step, "train_loss": loss_val, "val_loss": val_loss, "tokens_per_s": tps})
            log(f"step {step}: train loss {loss_val:.4f}, val loss {val_loss:.4f}, {tps:.0f} tokens/s")
        out_of_time = bool(r.max_minutes) and time.perf_counter() - t0 > 60 * r.max_minutes
        if world > 1 and r.max_minutes:  # every rank must stop at the same step
            flag = torch.tensor([float(out_of_time)], device=device)
            torch.distributed.all_reduce(flag)
            out_of_time = bool(flag.item())
        if out_of_time:
            log(f"stopping at step {step}: max_minutes={r.max_minutes} reached")
            end = step
            if not history or history[-1]["step"] != step:
                val_loss = evaluate_loss(core, val_batches, r, device)
                history.append({"step": step, "train_loss": loss_val, "val_loss": val_loss, "tokens_per_s": tps})
        if (step % r.ckpt_every == 0 or step == end) and rank == 0:
            save_checkpoint(out, core, tok, opt, {"step": step, "recipe": r.to_dict(), "history": history})
        if world > 1 and (step % r.ckpt_every == 0 or step == end):
            torch.distributed.barrier()
    return TrainResult(out, step, loss_val, val_loss, tokens / max(time.perf_counter() - t0, 1e-9), history)
