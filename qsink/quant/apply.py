"""The one model-surgery entry point: :func:`quantize_`.

Example:
    >>> report = quantize_(model, get_scheme("w4a4"), "hadamard", calib=windows, tokenizer=tok)  # doctest: +SKIP
    >>> report["sqnr_db_mean"]                                                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from qsink.data.windows import Windows
from qsink.errors import QsinkError
from qsink.models.adapter import adapter_for, head_dims, n_gqa
from qsink.quant.calibration import CalibrationStats, run_windows
from qsink.quant.handling import HANDLERS, Handler
from qsink.quant.qlinear import QLinear, QuantContext
from qsink.quant.schemes import Scheme
from qsink.validate import INCLUDABLE


def make_handler(handling: str, options: dict | None = None) -> Handler:
    cls = HANDLERS.get(handling)
    try:
        return cls(**(options or {}))
    except TypeError as e:
        raise QsinkError(f"bad options for {handling}: {e}") from None


def check_combination(scheme: Scheme, handling: str, options: dict | None = None) -> Handler:
    """Reject a scheme x handling combination that makes no sense, before any compute."""
    handler = make_handler(handling, options)
    if scheme.name == "fp" and handling != "none":
        raise QsinkError(f"fp quantizes nothing, so {handling} has nothing to protect; evaluate fp with --handling none")
    handler.check(scheme)
    return handler


def quantize_(model: nn.Module, scheme: Scheme, handling: str | Handler = "none", calib: Windows | None = None,
              tokenizer=None, options: dict | None = None, sqnr: bool = True, batch_size: int = 4,
              include: tuple[str, ...] = (), shared: CalibrationStats | None = None, artifacts: dict | None = None) -> dict:
    """Quantize ``model`` in place: every linear layer in its blocks becomes a :class:`QLinear`.

    Embeddings and ``lm_head`` stay in high precision unless ``include`` names them: ``lm_head``
    becomes a QLinear like the others (weights and input activations), ``embed`` has its weight
    rows quantized with the scheme's weight format. ``calib`` windows (from a training split)
    feed calibration-based methods, static scales and the per-linear SQNR. Returns a report for the
    record. The model's ``qsink_quant_context`` attribute switches all QLinears between modes.
    ``shared``: the fp model's calibration statistics on ``calib`` (:class:`CalibrationStats`); a
    handler that leaves the linears' inputs as they are takes its statistics from there instead of
    a calibration pass of its own (the same numbers, computed once per model). ``artifacts``: where a handler
    that learns something (SpinQuant's rotations) keeps it, ``{"dir": Path, "model_sha256": str}``.

    Family-level refusals (a handler's :meth:`~qsink.quant.handling.base.Handler.check_model`, KV
    quantization where k and v cannot be found) come before anything changes; then GPT-2's Conv1D
    layers become equivalent ``nn.Linear`` layers, then the handler rewrites. With ``+kvB`` schemes the
    k and v rows of fused projections (Phi-3's qkv_proj, GPT-2's c_attn) are quantized, not q's.
    """
    handler = handling if isinstance(handling, Handler) else check_combination(scheme, handling, options)
    unknown = set(include) - set(INCLUDABLE)
    if unknown:
        raise QsinkError(f"cannot include {sorted(unknown)} in quantization; choose from {', '.join(INCLUDABLE)}")
    handler.tokenizer, handler.shared, handler.artifacts = tokenizer, shared, artifacts
    needs_calib = handler.needs_calibration or scheme.act_static
    if needs_calib and calib is None:
        raise QsinkError(f"{scheme.name} with {handler.name} needs calibration windows")
    ad = adapter_for(model)
    handler.check_model(ad)  # family-level refusals, before anything changes
    kv = None
    kv_rows: list[dict] = [{} for _ in ad.blocks(model)]
    if scheme.kv is not None:
        kv_rows = [ad.kv_outputs(block) for block in ad.blocks(model)]  # linears holding k/v, and which rows
        if not any(kv_rows):
            raise QsinkError(f"{scheme.name} quantizes k and v after projection, and qsink cannot tell where k and v "
                             f"come out in {ad.family} blocks; drop the +kv suffix for this model")
        kv = scheme.kv_format(head_dims(model)[2])
    t0 = time.perf_counter()
    base = getattr(model, "qsink_base", None)  # (rewrite key, prepared handler) of a model rewrite_base_ made
    if base is not None:
        if handler.rewrite_key() != base[0]:
            raise QsinkError(f"this model was rewritten for {base[1].name} (rewrite {base[0]}) and only handlings that "
                             f"rewrite it the same way can start from it, not {handler.name}; quantize the fp model")
        handler.adopt(base[1])
    converted = ad.linearize_(model)  # GPT-2's Conv1D -> nn.Linear (function-preserving), before any rewrite
    if base is None:
        handler.prepare(model, ad, calib, scheme)
    handling_s = time.perf_counter() - t0
    # the linears' inputs are the fp model's, or those of the rewritten model this one is
    unchanged = handler.inputs_unchanged or base is not None
    ctx = QuantContext()
    qlinears: dict[str, QLinear] = {}
    blocks = ad.blocks(model)
    gqa = n_gqa(model)
    gguf_types: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    # the shared statistics are the fp model's: usable when nothing changed the linears' inputs (no rewrite, no
    # Conv1D conversion, whose arithmetic differs from nn.Linear's, no extra linear such as lm_head); fetched before
    # any linear is replaced, since the model being quantized may be the very model they are computed on
    # the calibration pass feeds static scales and the handlers that read its statistics afterwards; a handler that
    # only needed calibration data for its rewrite (smoothquant, token-keep) has what it needs already
    calibrates = needs_calib and (scheme.act_static or handler.reads_calibration)
    from_shared = (calibrates and shared is not None and unchanged and not converted and not include
                   and shared.basis == (base[0] if base else None))
    t_shared = time.perf_counter()
    if from_shared:
        needs = handler.shared_needs(scheme)
        base = shared.inputs("absmax", *sorted(needs & {"rows", "hessian", "sumsq"}))
        stats = shared.kept_inputs() if getattr(handler, "keeps_tokens", False) and scheme.act is not None else None
    shared_s = time.perf_counter() - t_shared
    originals: dict[tuple[int, str], nn.Module] = {}  # the replaced linears, for restore_()
    # set before any linear is replaced, so that a failure half-way can still be undone; exactly undoable when
    # nothing was rewritten, no Conv1D converted and nothing outside the blocks is replaced
    model.qsink_originals = originals
    model.qsink_restorable = unchanged and not converted and not include
    t_encode = time.perf_counter()
    for l, block in enumerate(blocks):
        for name, lin in list(ad.linears(block).items()):
            is_kv = kv is not None and name in kv_rows[l]
            w_fmt = scheme.weight_format_for(name, l, len(blocks), lin.weight.shape[1], gqa)
            if scheme.ftype is not None:
                t, why = scheme.gguf_choice(name, l, len(blocks), lin.weight.shape[1], gqa)
                gguf_types[f"{l}.{name}"] = t
                if why:
                    fallbacks[f"{l}.{name}"] = why
            q = QLinear.from_float(lin, f"{l}.{name}", ctx, w_fmt, scheme.act_format_for(w_fmt), out_fmt=kv if is_kv else None,
                                   out_rows=kv_rows[l].get(name), act_static=scheme.act_static,
                                   **handler.linear_options(l, name))
            originals[(l, name)] = lin
            ad.set_module(block, name, q)
            qlinears[q.name] = q
    encode_s = time.perf_counter() - t_encode
    if "lm_head" in include:
        head = model.get_output_embeddings()
        if head.weight is ad.embedding(model).weight:  # tied: the embedding keeps its own copy
            head.weight = nn.Parameter(head.weight.detach().clone())
        h_fmt = scheme.weight_format_for("lm_head", len(blocks), len(blocks), head.weight.shape[1], gqa)
        q = QLinear.from_float(head, "lm_head", ctx, h_fmt, scheme.act_format_for(h_fmt), act_static=scheme.act_static)
        if scheme.ftype is not None:
            gguf_types["lm_head"] = h_fmt.gguf_type
        model.set_output_embeddings(q)
        qlinears[q.name] = q
    if "embed" in include and scheme.weight is not None:
        emb = ad.embedding(model)
        with torch.no_grad():
            emb.weight.copy_(scheme.weight.fake(emb.weight.detach()))
    model.qsink_quant_context = ctx
    model.qsink_hooks = handler.install(model, ctx)
    t_calib = time.perf_counter()
    if calibrates:
        if from_shared:
            for name, q in qlinears.items():
                q.take_inputs(base[name])
                if stats is not None and q.act_fmt is not None:
                    q.calib_absmax = stats[name].calib_absmax if name in stats else None
        else:
            ctx.mode = "calibrate"
            run_windows(model, calib, batch_size)
        if scheme.act_static:
            for q in qlinears.values():
                q.set_static_scale()
        handler.after_calibration(qlinears)
        for q in qlinears.values():
            q.calib_rows = []
    calibration_s = time.perf_counter() - t_calib + shared_s
    t_sqnr = time.perf_counter()
    sqnr_by_linear = {}
    if sqnr and calib is not None:
        ctx.mode = "sqnr"
        run_windows(model, calib, batch_size)
        sqnr_by_linear = {n: q.sqnr_db for n, q in qlinears.items()}
    sqnr_s = time.perf_counter() - t_sqnr
    ctx.mode = "quant"
    ctx.kept_tokens = ctx.seen_tokens = 0
    finite = [v for v in sqnr_by_linear.values() if v is not None and math.isfinite(v)]
    report = {
        "scheme": scheme.to_dict(),
        "handling": {"name": handler.name, **handler.report()},
        "n_linears": len(qlinears),
        "include": list(include),
        "prepare_s": time.perf_counter() - t0,
        "calibration": None if calib is None else {"data": calib.data_name, "n_windows": calib.n_windows, "ctx": calib.ctx},
        "sqnr_db": sqnr_by_linear,
        "sqnr_db_mean": sum(finite) / len(finite) if finite else None,
        "sqnr_db_min": min(finite) if finite else None,
        "sqnr_db_min_linear": min((v, n) for n, v in sqnr_by_linear.items() if v is not None)[1] if finite else None,
        "weight_encode_s": encode_s,
        "timing": {"handling_s": handling_s, "encode_s": encode_s, "calibration_s": calibration_s, "sqnr_s": sqnr_s,
                   "calibration": ("shared" if from_shared else "own pass") if calibrates else "none",
                   "calibration_cached": bool(from_shared and shared.loaded),
                   "rewrite": "shared" if base is not None else ("own" if not handler.inputs_unchanged else "none")},
    }
    if qlinears and any(q.weight_fmt is not None for q in qlinears.values()):
        report["weight_bits"] = _bits_per_weight(qlinears)
    if scheme.overrides:
        from qsink.quant.mixture import format_name

        report["mixture"] = {name: format_name(q.weight_fmt) if q.weight_fmt is not None else "fp16"
                             for name, q in qlinears.items()}
    if scheme.ftype is not None:  # every linear's GGUF type (after the handler, which may change them: imatrix)
        types = {n: q.weight_fmt.gguf_type for n, q in qlinears.items()} if qlinears else gguf_types
        counts: dict[str, int] = {}
        for t in types.values():
            counts[t] = counts.get(t, 0) + 1
        report["gguf"] = {"ftype": scheme.ftype, "types": types, "type_counts": counts, "fallbacks": fallbacks,
                          "bits_per_weight": _bits_per_weight(qlinears) if qlinears else None}
    return report


def _bits_per_weight(qlinears: dict) -> float:
    """Weighted mean stored bits per weight of the quantized linears, scales included (GGUF types as llama.cpp
    counts them, a linear left in high precision as fp16; :func:`qsink.quant.mixture.bits_per_weight`)."""
    from qsink.quant.mixture import bits_per_weight

    n = sum(q.weight_fp.numel() for q in qlinears.values())
    return sum(q.weight_fp.numel() * bits_per_weight(q.weight_fmt, q.in_features) for q in qlinears.values()) / n


def restorable(model: nn.Module, handling: str | Handler, include: tuple[str, ...] = ()) -> bool:
    """Whether quantizing ``model`` in place and :func:`restore_` give it back exactly: the handler rewrites
    nothing (QLinears copy their weights, the replaced modules are kept as they were) or ``model`` is the
    rewritten model it adopts (:func:`rewrite_base_`), no GPT-2 Conv1D needs converting and no module outside
    the blocks is replaced."""
    handler = handling if isinstance(handling, Handler) else make_handler(handling)
    base = getattr(model, "qsink_base", None)
    unchanged = handler.rewrite_key() == base[0] if base is not None else handler.inputs_unchanged
    return unchanged and not include and not adapter_for(model).has_conv1d(model)


@torch.no_grad()
def rewrite_base_(model: nn.Module, handler: Handler) -> nn.Module:
    """Rewrite ``model`` in place as ``handler.prepare`` would (for a handler with a :meth:`~Handler.rewrite_key`),
    once for every cell whose handler rewrites it the same way: each :func:`quantize_` of it adopts the rewrite
    instead of preparing a copy of its own, and :func:`restore_` gives the rewritten model back. The input
    transforms its QLinears would apply (Hadamard's online rotation before down_proj) run as hooks on the plain
    linears, so the rewritten model computes the fp function and its calibration statistics are those a
    QLinear's own pass records."""
    key = handler.rewrite_key()
    if key is None:
        raise QsinkError(f"{handler.name}'s rewrite depends on the scheme or the calibration data; it cannot be shared")
    if getattr(model, "qsink_base", None) is not None or getattr(model, "qsink_originals", None) is not None:
        raise QsinkError("this model is already rewritten or quantized; rewrite a copy of the fp model")
    ad = adapter_for(model)
    handler.check_model(ad)
    ad.linearize_(model)
    handler.prepare(model, ad, None, None)
    for l, block in enumerate(ad.blocks(model)):
        for name, lin in ad.linears(block).items():
            transform = handler.linear_options(l, name).get("input_transform")
            if transform is not None:
                lin.register_forward_pre_hook(lambda module, args, t=transform: (t(args[0]),) + tuple(args[1:]))
    model.qsink_base = (key, handler)
    return model


def restore_(model: nn.Module) -> nn.Module:
    """Undo :func:`quantize_` on a model quantized with a :func:`restorable` handling: the original linear
    modules go back into the blocks and the handler's hooks are removed. Exact (the same module objects,
    untouched); refuses a model whose quantization rewrote it."""
    originals = getattr(model, "qsink_originals", None)
    if originals is None:
        raise QsinkError("this model was not quantized by quantize_ (or was restored already)")
    if not getattr(model, "qsink_restorable", False):
        raise QsinkError("this model's quantization rewrote it (weights, converted modules or lm_head), so it cannot "
                         "be restored in place; quantize a copy instead")
    ad = adapter_for(model)
    blocks = ad.blocks(model)
    for (l, name), lin in originals.items():
        ad.set_module(blocks[l], name, lin)
    for h in getattr(model, "qsink_hooks", []) or []:
        h.remove()
    for attr in ("qsink_quant_context", "qsink_originals", "qsink_hooks", "qsink_restorable"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


MODES = ("quant", "off", "calibrate", "sqnr")


def set_mode(model: nn.Module, mode: str) -> None:
    """Switch a quantized model's QLinears: 'quant', 'off', 'calibrate' or 'sqnr'."""
    if mode not in MODES:
        raise QsinkError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    model.qsink_quant_context.mode = mode


def kept_token_fraction(model: nn.Module) -> dict | None:
    ctx = getattr(model, "qsink_quant_context", None)
    if ctx is None or ctx.seen_tokens == 0:
        return None
    return {"kept_tokens": ctx.kept_tokens, "seen_tokens": ctx.seen_tokens, "fraction": ctx.kept_tokens / ctx.seen_tokens}
