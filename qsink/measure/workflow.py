"""``qsink measure`` as a function: resolve, load, window, profile, and the analyses that ride on the
profile (attribution, vocabulary scan, gradient sinks), stored as one record cached by identity."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qsink.data.text import Text
from qsink.data.windows import make_windows, tokens_for
from qsink.errors import QsinkError
from qsink.measure.attribution import attribute_channels, ffn_quadratic_analysis
from qsink.measure.collect import profile
from qsink.measure.document import Profile
from qsink.measure.gradients import gradient_sinks
from qsink.measure.vocab_scan import vocab_scan
from qsink.models import ResolvedModel, check_ctx, load, resolve
from qsink.models.adapter import text_config
from qsink.records import RecordStore, cell_key, env_info
from qsink.measure.options import MeasureOptions, ProfileSettings

ProgressFactory = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


@dataclass
class MeasureOutcome:
    profile: Profile
    path: Path
    skipped: bool  # the profile (and every extra analysis asked for) was stored already


def profile_identity(res: ResolvedModel, text: Text, ctx: int, samples: int, dtype: str, s: ProfileSettings) -> dict:
    return {"kind": "profile", **res.key_fields(), "data_sha256": text.sha256, "ctx": ctx, "samples": samples,
            "dtype": dtype, "settings": s.to_dict()}


def measure_model(spec: str | ResolvedModel, text: Text, store: RecordStore, options: MeasureOptions = MeasureOptions(),
                  settings: ProfileSettings | None = None, loaded=None, log: Callable[[str], None] = print,
                  progress_factory: ProgressFactory | None = None) -> MeasureOutcome:
    """``qsink measure``: profile one model on ``options.samples`` windows of ``text``, plus the analyses
    the options ask for, all in one profile record; a stored profile with the same identity is reused
    and only gains what it lacks.

    ``loaded`` is an already loaded ``(model, tokenizer)``; ``progress_factory(description, total)``
    returns a callback that is advanced as windows (or vocabulary items) are done.
    """
    settings = settings or ProfileSettings()
    o = options
    res = resolve(spec)
    ident = profile_identity(res, text, o.ctx, o.samples, o.dtype, settings)
    key = cell_key(ident)
    found = None if o.force else store.find_ok(key)
    if found and not _missing(found[1], o):
        return MeasureOutcome(Profile.from_dict(found[1]), found[0], skipped=True)
    store.ensure_writable()
    model, tok = loaded or load(res, dtype=o.dtype, device=o.device, trust_remote_code=o.trust_remote_code, log=log)
    check_ctx(model, o.ctx, res.name)
    _check_scan_layers(o.scan_layers, text_config(model).num_hidden_layers)
    windows = make_windows(tok, text, o.ctx, max_tokens=tokens_for(tok, o.samples, o.ctx))
    if found:  # the cached profile only gains the analyses it lacks
        doc = dict(found[1])
    else:
        on_batch = progress_factory(f"{res.name} · profile", windows.n_windows) if progress_factory else None
        torch.manual_seed(0)
        prof = profile(model, tok, windows, settings, batch_size=o.batch_size, on_batch=on_batch)
        doc = prof.to_dict() | {
            "key": key,
            "identity": ident,
            "status": "ok",
            "model": res.to_dict() | {"family": model.config.model_type},
            "env": env_info(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    for name in _missing(doc, o):
        if name == "attribution":
            doc["attribution"] = spike_attribution(model, windows.input_ids[:1], doc)
        elif name == "vocab_scan":
            doc["vocab_scan"] = _vocab_scan(model, tok, doc, o, f"{res.name} · vocabulary scan", progress_factory)
        else:
            doc["gradient_sinks"] = gradient_sinks(model, make_windows(
                tok, text, o.ctx, max_tokens=tokens_for(tok, o.grad_windows, o.ctx)).input_ids[: o.grad_windows])
    path = store.write(doc, f"{res.name}__profile")
    return MeasureOutcome(Profile(doc), path, skipped=False)


def _check_scan_layers(layers: tuple[int, ...] | None, n_layers: int) -> None:
    if layers and (min(layers) < 1 or max(layers) > n_layers):
        raise QsinkError(f"--scan-layers must lie in 1..{n_layers} (residual stream after each block)")


def _scan_layers(doc: dict, o: MeasureOptions) -> list[int]:
    """The layers a vocabulary scan checks: the options', else the first three of the position-0 plateau."""
    if o.scan_layers:
        return list(o.scan_layers)
    pos0 = [p for p in doc.get("massive", {}).get("positions", []) if p["position"] == 0]
    return pos0[0]["layers"][:3] if pos0 else [max(1, doc["summary"]["spike_layer"])]


def _missing(doc: dict, o: MeasureOptions) -> list[str]:
    """The analyses ``o`` asks for that the stored profile ``doc`` does not hold with the same settings."""
    out = []
    if o.attribution and "attribution" not in doc:
        out.append("attribution")
    scan = doc.get("vocab_scan")
    if o.vocab_scan and not (scan and scan["layers"] == _scan_layers(doc, o) and scan["n_scanned"] == (
            min(o.sample, scan["vocab_size"]) if o.sample else scan["vocab_size"])):
        out.append("vocab_scan")
    grads = doc.get("gradient_sinks")
    if o.gradients and not (grads and grads["n_windows"] == o.grad_windows and grads["ctx"] == o.ctx):
        out.append("gradient_sinks")
    return out


def _vocab_scan(model, tok, doc: dict, o: MeasureOptions, desc: str, progress_factory) -> dict:
    advance = progress_factory(desc, min(o.sample, len(tok)) if o.sample else len(tok)) if progress_factory else None
    return vocab_scan(model, tok, _scan_layers(doc, o), sample=o.sample, massive_abs=doc["settings"]["massive_abs"],
                      massive_ratio=doc["settings"]["massive_ratio"], on_batch=advance)


def spike_attribution(model, input_ids, doc: dict, max_channels: int = 3) -> dict:
    """Attribution of the profile's spike channels on its main spike position, and the quadratic-form
    analysis of the FFN that injects the top channel (first window)."""
    s = doc["summary"]
    positions = doc.get("massive", {}).get("positions") or []
    position = positions[0]["position"] if positions else 0
    channels = s["spike_channels"][:max_channels] or [doc["layers"][s["spike_layer"]]["top"][0]["channel"]]
    channels_out = attribute_channels(model, input_ids, channels, position)
    out = {"position": position, "window": 0, "channels": [{k: v for k, v in c.items() if k != "steps"} | {
        "steps": [st for st in c["steps"] if abs(st["delta"]) > 0]} for c in channels_out]}
    inj = channels_out[0]["injector"]
    if inj["sublayer"] == "ffn":
        try:
            out["quadratic_form"] = ffn_quadratic_analysis(model, input_ids, inj["block"], channels[0], position)
        except QsinkError as e:
            out["quadratic_form"] = {"error": str(e)}
    return out
