"""SpinQuant: rotations learned against the quantized network's loss (Liu et al., arXiv 2405.16406).

Where QuaRot (:mod:`qsink.quant.handling.hadamard`) rotates the residual stream by a random Hadamard
matrix, SpinQuant starts from one and trains it:

* **R1** (hidden x hidden) rotates the residual stream, folded into the weights exactly as Hadamard's
  rotation is (norm scales fused into their readers, tied embeddings untied first);
* **R2** (head_dim x head_dim, one per layer) rotates each value head between v_proj and o_proj: v's
  rows of every kv head become ``R2^T W_h``, o's columns of every query head ``W_h R2`` (attention
  mixes values linearly, so the product is unchanged);
* **R4**, the online Hadamard before down_proj, stays fixed, as in the paper. **R3** (a Hadamard on
  q and k after RoPE, for a quantized KV cache) is not applied: qsink quantizes k and v at the
  projections' outputs, before RoPE, where R3 cannot act.

R1 and R2 start as qsink's seeded random Hadamards; every other parameter is frozen. The loss is the
next-token cross-entropy on the calibration windows of the model with the scheme's activation (and KV)
fake quantization on and 16-bit weights, gradients passing the rounding straight through; the rotations
follow Cayley SGD (:mod:`qsink.quant.cayley`: lr 1.5 on a cosine schedule, momentum 0, 100 steps by
default, one calibration window per step in turn). Static-scale schemes train with each batch's own
scale (the static scales are calibrated on the rotated model afterwards, as for every method).

``spinquant+gptq`` is the paper's recommended pairing: the rotations learned this way, then GPTQ on the
rotated weights. Families whose residual cannot take a folded rotation (norms writing to it: Gemma 2/3's
sandwich, OLMo-2; LayerNorm, DyT) learn R2 only; the record says why R1 was not learned.

Learned rotations are kept on disk (``artifacts``, beside the records: ``rotations/``) under a key of the
model, the calibration windows, every linear's activation format and the training options, so a cell is
not retrained to be evaluated again and schemes that quantize activations alike share them.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qsink.errors import QsinkError
from qsink.models.adapter import head_dims, n_gqa, text_config
from qsink.quant.cayley import CayleySGD, cosine_lr, orthogonality_error
from qsink.quant.hadamard_matrices import apply_hadamard, hadamard_factors, random_hadamard
from qsink.quant.handling.base import Handler, needs_acts, register
from qsink.quant.handling.gptq import GPTQ
from qsink.quant.handling.hadamard import fuse_norms_, rotate_down_inputs_, rotate_residual_, untie_head_
from qsink.quant.qlinear import fake_rows

# what a trained rotation depends on besides its key's data: bump when the training (loss, quantizers, the Cayley step,
# the Hadamard start) changes what it learns, so that rotations kept on disk are trained again
ROTATIONS_VERSION = 1

R1_REFUSED = ("the residual stream of {family} blocks cannot take a rotation folded into the weights (norms write to "
              "it, or its norms are not scale-free RMSNorms); R1 is not learned, R2 and R4 are")


def _act_formats(model, adapter, scheme) -> dict[str, object]:
    """Per block linear (``"layer.name"``): the activation format the scheme gives its input (None: not quantized)."""
    blocks, gqa = adapter.blocks(model), n_gqa(model)
    return {f"{l}.{name}": scheme.act_format_for(scheme.weight_format_for(name, l, len(blocks), lin.weight.shape[1], gqa))
            for l, block in enumerate(blocks) for name, lin in adapter.linears(block).items()}


class _Layout:
    """Which weights R1 and R2 act on, and how; :meth:`weights` gives them rotated (differentiably, for training)."""

    def __init__(self, model, adapter, use_r1: bool, use_r2: bool, down: str | None = None):
        self.model, self.use_r1, self.use_r2 = model, use_r1, use_r2
        self.heads, self.kv_heads, self.hd = head_dims(model)
        names = {id(p): n for n, p in model.named_parameters()}
        # (param name, roles, layer, frozen weight, v rows); roles: embedding / reader / writer / value / out, ":bias"
        self.items: list[tuple[str, frozenset, int, torch.Tensor, slice | None]] = []
        if use_r1:
            self.items.append((names[id(adapter.embedding(model).weight)], frozenset({"reader"}), -1,
                               adapter.embedding(model).weight.detach(), None))
            head = model.get_output_embeddings().weight
            self.items.append((names[id(head)], frozenset({"reader"}), -1, head.detach(), None))
        for l, block in enumerate(adapter.blocks(model)):
            roles: dict[int, set[str]] = {}
            mods: dict[int, tuple] = {}

            def mark(lin, role, rows=None):
                roles.setdefault(id(lin), set()).add(role)
                prev = mods.get(id(lin), (lin, None))
                mods[id(lin)] = (lin, rows if rows is not None else prev[1])

            if use_r1:
                for _, readers in adapter.norm_groups:
                    for r in readers:
                        mark(adapter.module(block, r), "reader")
                for w in adapter.residual_writers:
                    mark(adapter.module(block, w), "writer")
            if use_r2:
                v_spec, o_path = adapter.value_pair
                v, rows = adapter.rows(block, v_spec)
                mark(v, "value", rows)
                mark(adapter.module(block, o_path), "out")
            if down is not None:  # R4: W H, after R1 (as the final model gets it)
                mark(adapter.module(block, down), "down")
            for key, (lin, rows) in mods.items():
                r = frozenset(roles[key])
                self.items.append((names[id(lin.weight)], r, l, lin.weight.detach(), rows))
                if lin.bias is not None and r & {"writer", "value"}:
                    self.items.append((names[id(lin.bias)], r | {":bias"}, l, lin.bias.detach(), rows))

    def weights(self, R1: torch.Tensor | None, R2: list[torch.Tensor], compute=torch.float32) -> dict[str, torch.Tensor]:
        """Every weight R1 / R2 touch, rotated: readers ``W R1``, writers ``R1^T W`` (bias ``b R1``), v's rows of each
        kv head ``R2^T W_h`` (bias ``b_h R2``), o's columns of each query head ``W_h R2``."""
        out = {}
        for name, roles, layer, W, rows in self.items:
            bias = ":bias" in roles
            W = W.to(compute)
            if "value" in roles:
                W = self._values(W, R2[layer], rows, bias)
            if "out" in roles:
                W = (W.reshape(W.shape[0], self.heads, self.hd) @ R2[layer]).reshape(W.shape)
            if R1 is not None and "reader" in roles:
                W = W @ R1
            if R1 is not None and "writer" in roles:
                W = W @ R1 if bias else R1.T @ W
            if "down" in roles and not bias:
                W = apply_hadamard(W)
            out[name] = W.to(self.model.dtype)
        return out

    def _values(self, W, R2, rows: slice, bias: bool):
        start, stop = rows.start or 0, rows.stop if rows.stop is not None else W.shape[0]
        v = W[start:stop]
        v = (v.reshape(-1, self.hd) @ R2).reshape(-1) if bias else (R2.T @ v.reshape(-1, self.hd, v.shape[-1])).reshape(v.shape)
        return v if (start, stop) == (0, W.shape[0]) else torch.cat([W[:start], v, W[stop:]])


def _ste(fmt):
    def quantize(x):
        return x + (fmt.fake(x.detach()) - x).detach()
    return quantize


@register
class SpinQuant(Handler):
    name = "spinquant"
    inputs_unchanged = False  # rotates / scales the linears' inputs: its own calibration pass
    needs_calibration = True
    description = ("learned rotations (SpinQuant, arXiv 2405.16406): R1 on the residual stream and R2 per layer between v "
                   "and o, trained by Cayley SGD on the fake-quantized cross-entropy from random Hadamards; online "
                   "Hadamard before down_proj")

    def __init__(self, steps: int = 100, lr: float = 1.5, batch: int = 1, seed: int = 0):
        if int(steps) < 0 or float(lr) <= 0 or int(batch) < 1:
            raise QsinkError("spinquant needs steps >= 0, lr > 0 and batch >= 1")
        self.steps, self.lr, self.batch, self.seed = int(steps), float(lr), int(batch), int(seed)
        self.ffn_pair = None
        self.r1_reason: str | None = None
        self.result: dict = {}
        self.progress = True

    def check(self, scheme) -> None:
        needs_acts(self, scheme)

    def check_model(self, adapter) -> None:
        if not adapter.can_rotate_residual() and adapter.value_pair is None:
            raise QsinkError(f"spinquant learns R1 on the residual stream and R2 between v and o, and {adapter.family} "
                             "blocks allow neither; use hadamard (online) instead")

    def prepare(self, model, adapter, calib, scheme) -> None:
        use_r1 = adapter.can_rotate_residual()
        use_r2 = adapter.value_pair is not None
        self.r1_reason = None if use_r1 else R1_REFUSED.format(family=adapter.family)
        D = text_config(model).hidden_size
        hd = head_dims(model)[2]
        device = next(model.parameters()).device
        if use_r1:
            hadamard_factors(D)
            untie_head_(model, adapter)
            fuse_norms_(model, adapter)
        if use_r2:
            hadamard_factors(hd)
        self.ffn_pair = adapter.ffn_pair  # R4: fixed, online; part of the network the rotations are trained in
        R1 = random_hadamard(D, self.seed).to(device) if use_r1 else None
        R2 = [random_hadamard(hd, self.seed + 1 + l).to(device) for l in range(len(adapter.blocks(model)))] if use_r2 else []
        cached = self._load(model, adapter, calib, scheme)
        if cached is not None:
            R1, R2 = cached["R1"], cached["R2"]
            self.result = cached["result"] | {"from_cache": True}
        else:
            R1, R2 = self._train(model, adapter, calib, scheme, R1, R2, use_r1, use_r2)
            self._save(R1, R2)
        with torch.no_grad():  # in float64, as Hadamard's rotation: R2 on v and o, then R1 on the residual
            if use_r2:
                params = dict(model.named_parameters())
                layout = _Layout(model, adapter, use_r1=False, use_r2=True)
                for name, W in layout.weights(None, [r.to(device, torch.float64) for r in R2], torch.float64).items():
                    params[name].copy_(W)
            if R1 is not None:
                rotate_residual_(model, adapter, R1.to(device, torch.float64))
            if self.ffn_pair:
                rotate_down_inputs_(model, adapter)

    # ------------------------------------------------------------------ training

    def _train(self, model, adapter, calib, scheme, R1, R2, use_r1, use_r2):
        layout = _Layout(model, adapter, use_r1, use_r2, down=self.ffn_pair[1] if self.ffn_pair else None)
        formats = _act_formats(model, adapter, scheme)
        kv_fmt = scheme.kv_format(layout.hd)
        hooks = []
        for l, block in enumerate(adapter.blocks(model)):
            for name, lin in adapter.linears(block).items():
                fmt = formats[f"{l}.{name}"]
                down = self.ffn_pair is not None and name == self.ffn_pair[1]
                quantize = _ste(fmt) if fmt is not None else (lambda x: x)
                if down:
                    hooks.append(lin.register_forward_pre_hook(
                        lambda m, args, q=quantize: (q(apply_hadamard(args[0])),) + tuple(args[1:])))
                elif fmt is not None:
                    hooks.append(lin.register_forward_pre_hook(lambda m, args, q=quantize: (q(args[0]),) + tuple(args[1:])))
            if kv_fmt is not None:
                for name, rows in adapter.kv_outputs(block).items():
                    rows = None if rows is None else tuple(sorted(rows, key=lambda r: r.start))
                    hooks.append(adapter.module(block, name).register_forward_hook(
                        lambda m, args, y, q=_ste(kv_fmt), rows=rows: fake_rows(y, q, rows)))
        R1p = torch.nn.Parameter(R1.clone()) if R1 is not None else None
        R2p = [torch.nn.Parameter(r.clone()) for r in R2]
        rotations = ([R1p] if R1p is not None else []) + R2p
        opt = CayleySGD(rotations, lr=self.lr)
        frozen = {p: p.requires_grad for p in model.parameters()}
        for p in frozen:
            p.requires_grad_(False)
        device = next(model.parameters()).device
        ids_all = calib.input_ids
        curve, ortho, iters = [], 0.0, 0
        bar = _bar(self.steps, self.progress)
        t0 = time.perf_counter()
        try:
            init_loss = self._loss_all(model, layout, R1p, R2p, ids_all, device)
            for step in range(self.steps):
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(self.lr, step, self.steps)
                start = (step * self.batch) % ids_all.shape[0]
                idx = [(start + i) % ids_all.shape[0] for i in range(self.batch)]
                ids = ids_all[idx].to(device)
                opt.zero_grad()
                loss = self._loss(model, layout, R1p, R2p, ids)
                loss.backward()
                opt.step()
                iters = max(iters, opt.last_iters)
                ortho = max([ortho] + [orthogonality_error(r.detach()) for r in rotations])
                curve.append(float(loss.detach()))
                bar(step, curve[-1])
            final_loss = self._loss_all(model, layout, R1p, R2p, ids_all, device)
        finally:
            for h in hooks:
                h.remove()
            for p, req in frozen.items():
                p.requires_grad_(req)
            bar(None, None)
        self.result = {"steps": self.steps, "lr": self.lr, "schedule": "cosine", "momentum": 0.0, "batch_windows": self.batch,
                       "calibration_windows": int(ids_all.shape[0]), "tokens_per_step": self.batch * int(ids_all.shape[1]),
                       "loss_at_hadamard": init_loss, "loss_learned": final_loss, "loss_curve": curve,
                       "max_orthogonality_error": ortho, "max_cayley_iterations": iters,
                       "train_s": time.perf_counter() - t0, "from_cache": False}
        return (R1p.detach() if R1p is not None else None), [r.detach() for r in R2p]

    def _loss(self, model, layout, R1, R2, ids) -> torch.Tensor:
        from torch.func import functional_call

        w = layout.weights(None if R1 is None else R1.float(), [r.float() for r in R2])
        logits = functional_call(model, w, (ids,), {"use_cache": False}, strict=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))

    @torch.no_grad()
    def _loss_all(self, model, layout, R1, R2, ids_all, device) -> float:
        """Mean cross-entropy of the quantized network over every calibration window."""
        total = 0.0
        for i in range(ids_all.shape[0]):
            total += float(self._loss(model, layout, R1, R2, ids_all[i : i + 1].to(device)))
        return total / ids_all.shape[0]

    # ------------------------------------------------------------------ the cache of learned rotations

    def _key(self, model, adapter, calib, scheme) -> dict | None:
        art = self.artifacts
        if art is None:
            return None
        acts = {name: str(f) for name, f in _act_formats(model, adapter, scheme).items()}
        return {"model_sha256": art["model_sha256"], "windows_sha256": hashlib.sha256(calib.input_ids.numpy().tobytes()).hexdigest(),
                "activations": hashlib.sha256(json.dumps(acts, sort_keys=True).encode()).hexdigest(),
                "kv": None if scheme.kv is None else str(scheme.kv), "dtype": str(next(model.parameters()).dtype),
                "steps": self.steps, "lr": self.lr, "batch": self.batch, "seed": self.seed,
                "version": ROTATIONS_VERSION, "torch": str(torch.__version__)}

    def _path(self, key: dict) -> Path:
        h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return Path(self.artifacts["dir"]) / f"spinquant-{h}.pt"

    def _load(self, model, adapter, calib, scheme) -> dict | None:
        self._cache_key = key = self._key(model, adapter, calib, scheme)
        if key is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise QsinkError(f"the learned rotations {path} are unreadable ({type(e).__name__}); delete the file "
                             f"(rm '{path}') and run again to retrain them") from None
        if doc.get("key") != key:
            return None
        device = next(model.parameters()).device
        return {"R1": None if doc["R1"] is None else doc["R1"].to(device), "R2": [r.to(device) for r in doc["R2"]],
                "result": json.loads(doc["result"])}

    def _save(self, R1, R2) -> None:
        key = getattr(self, "_cache_key", None)
        if key is None:
            return
        from qsink.files import atomic_write_bytes

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"key": key, "R1": None if R1 is None else R1.cpu(), "R2": [r.cpu() for r in R2],
                    "result": json.dumps(self.result)}, buf)
        atomic_write_bytes(path, buf.getvalue())
        self.result["path"] = f"rotations/{path.name}"

    # ------------------------------------------------------------------ quantization

    def linear_options(self, layer: int, name: str) -> dict:
        if self.ffn_pair and name == self.ffn_pair[1]:
            return {"input_transform": apply_hadamard, "transform_name": "hadamard"}
        return {}

    def report(self) -> dict:
        out = {"r1": "learned" if self.r1_reason is None else f"not learned: {self.r1_reason}", "r2": "learned",
               "r3": "not applied (qsink quantizes k and v before RoPE)", "r4": "online Hadamard before down_proj"}
        return out | {k: v for k, v in self.result.items()}


def _bar(total: int, enabled: bool):
    """A progress bar over training steps with the loss (tqdm on a terminal; silent otherwise)."""
    if not enabled or total == 0:
        return lambda step, loss: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="spinquant rotations", unit="step", disable=None, leave=False)

    def update(step, loss):
        if step is None:
            bar.close()
            return
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    return update


@register
class SpinQuantGPTQ(SpinQuant):
    """SpinQuant's recommended pairing: rotations learned with 16-bit weights, then GPTQ on the rotated weights
    (Hessians from the rotated model's calibration pass)."""

    name = "spinquant+gptq"
    description = "spinquant's learned rotations, then GPTQ on the rotated weights (the paper's pairing); integer weights"

    def __init__(self, steps: int = 100, lr: float = 1.5, batch: int = 1, seed: int = 0, damp: float = 0.01,
                 block: int = 128):
        super().__init__(steps=steps, lr=lr, batch=batch, seed=seed)
        self.gptq = GPTQ(damp=damp, block=block)

    def check(self, scheme) -> None:
        super().check(scheme)
        self.gptq.check(scheme)

    def install(self, model, ctx) -> list:
        return self.gptq.install(model, ctx)

    def after_calibration(self, qlinears: dict) -> None:
        self.gptq.after_calibration(qlinears)

    def report(self) -> dict:
        return super().report() | {"gptq": self.gptq.report()}

