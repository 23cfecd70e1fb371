"""``qsink measure`` as a function: resolve, load, window, profile, store (cached by identity)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qsink.data.corpora import Text
from qsink.data.windows import adds_bos, make_windows
from qsink.errors import QsinkError
from qsink.measure.profile import Profile
from qsink.measure.profiler import ProfileSettings, profile
from qsink.models import ResolvedModel, check_ctx, load, resolve
from qsink.results.record import cell_key, env_info
from qsink.results.store import RecordStore
from qsink.models.loader import DTYPES
from qsink.validate import at_least, check_device


@dataclass
class MeasureOutcome:
    profile: Profile
    path: Path
    skipped: bool


def check_options(ctx: int, samples: int, batch_size: int, dtype: str, device: str) -> None:
    """What ``qsink measure`` checks before it loads anything."""
    at_least(flags=True, ctx=(ctx, 2), samples=(samples, 1), batch_size=(batch_size, 1))
    if dtype not in DTYPES:
        raise QsinkError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
    check_device(device)


def profile_identity(res: ResolvedModel, text: Text, ctx: int, samples: int, dtype: str, s: ProfileSettings) -> dict:
    return {"kind": "profile", "model_sha256": res.sha256, "data_sha256": text.sha256, "ctx": ctx, "samples": samples,
            "dtype": dtype, "settings": s.to_dict()}


def measure_model(
    spec: str | ResolvedModel,
    text: Text,
    store: RecordStore,
    ctx: int = 512,
    samples: int = 16,
    settings: ProfileSettings | None = None,
    dtype: str = "fp32",
    device: str = "auto",
    batch_size: int = 1,
    force: bool = False,
    trust_remote_code: bool = False,
    loaded=None,
    log: Callable[[str], None] = print,
    on_batch_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    attribution: bool = False,
) -> MeasureOutcome:
    """Profile one model on ``samples`` windows of ``text``; reuse a stored profile with the same identity.

    ``attribution``: also attribute the spike channels to the sub-layers that inject and remove them
    (:mod:`qsink.measure.attribution`), stored in the same profile record (added to a cached one)."""
    settings = settings or ProfileSettings()
    check_options(ctx, samples, batch_size, dtype, device)
    res = resolve(spec)
    ident = profile_identity(res, text, ctx, samples, dtype, settings)
    key = cell_key(ident)
    found = None if force else store.find_ok(key)
    if found and not (attribution and "attribution" not in found[1]):
        return MeasureOutcome(Profile.from_dict(found[1]), found[0], skipped=True)
    store.ensure_writable()
    model, tok = loaded or load(res, dtype=dtype, device=device, trust_remote_code=trust_remote_code, log=log)
    check_ctx(model, ctx, res.name)
    windows = make_windows(tok, text, ctx, max_tokens=samples * (ctx - 1 if adds_bos(tok) else ctx))
    if found:  # the cached profile only gains the attribution
        doc = dict(found[1])
    else:
        on_batch = on_batch_factory(f"{res.name} · profile", windows.n_windows) if on_batch_factory else None
        torch.manual_seed(0)
        prof = profile(model, tok, windows, settings, batch_size=batch_size, on_batch=on_batch)
        doc = prof.to_dict() | {
            "key": key,
            "identity": ident,
            "status": "ok",
            "model": res.to_dict() | {"family": model.config.model_type},
            "env": env_info(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    if attribution:
        doc["attribution"] = spike_attribution(model, windows.input_ids[:1], doc)
    path = store.write(doc, f"{res.name}__profile")
    return MeasureOutcome(Profile(doc), path, skipped=False)


def spike_attribution(model, input_ids, doc: dict, max_channels: int = 3) -> dict:
    """Attribution of the profile's spike channels on its main spike position, and the quadratic-form
    analysis of the FFN that injects the top channel (first window)."""
    from qsink.measure.attribution import attribute_channels, ffn_quadratic_analysis

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
