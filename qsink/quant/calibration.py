"""Calibration data and statistics: a fixed, seeded set of windows from a training split.

Calibration never reads the test split: by default it draws ``n`` windows (seeded) from
``austen:train``.

What a quantized cell needs from the fp model's activations on those windows (static activation
scales, SmoothQuant's per-channel maxima, GPTQ's Hessians, llama.cpp's imatrix, clipping rows,
token-keep's spike tokens) is the same for every cell of a model whose outlier handling leaves the
linears' inputs as they are: :class:`CalibrationStats` computes it once per (model, windows) and
hands each cell what it asks for. Each statistic is accumulated by :func:`record_input`, the same
code a ``QLinear`` runs in its own calibration pass, batch by batch in the same order, so a cell
gets the numbers its own pass would have given, bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from qsink.data.text import Text
from qsink.data.windows import Windows, make_windows


def calibration_windows(tokenizer, text: Text, n: int, ctx: int, seed: int = 0) -> Windows:
    """``n`` windows of ``ctx`` tokens drawn without replacement (seeded) from ``text``."""
    w = make_windows(tokenizer, text, ctx)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(w.n_windows, generator=g)[: min(n, w.n_windows)].sort().values
    w.input_ids = w.input_ids[idx]
    w.data_name = f"{text.name} (calibration: {len(idx)} windows, seed {seed})"
    return w


@torch.inference_mode()
def run_windows(model, windows: Windows, batch_size: int = 4) -> None:
    device = next(model.parameters()).device
    for start in range(0, windows.n_windows, batch_size):
        model(input_ids=windows.input_ids[start : start + batch_size].to(device), use_cache=False)


CALIB_SAMPLE_ROWS = 256  # input rows kept per linear for the clipping search


class LinearInputs:
    """What calibration keeps of one linear's inputs: per-channel absmax, a seeded sample of rows,
    ``2 X^T X`` (GPTQ's Hessian) and the per-channel sum of squares with its row count (imatrix)."""

    def __init__(self):
        self.calib_absmax: torch.Tensor | None = None
        self.calib_rows: list[torch.Tensor] = []
        self.hessian: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.sumsq_rows = 0


def record_input(stats, x: torch.Tensor, *, mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 hessian: bool = False, sumsq: bool = False, rows: bool = True) -> None:
    """Add one batch of a linear's input ``x`` (..., in) to ``stats`` (a :class:`LinearInputs` or a QLinear). Rows
    under ``mask`` (tokens kept in high precision) count for the Hessian and imatrix but not for the absmax and the
    row sample, which set activation scales; the sample draws from ``generator``."""
    flat = x.detach().reshape(-1, x.shape[-1]).float()
    if hessian:
        h = 2 * flat.T @ flat
        stats.hessian = h if stats.hessian is None else stats.hessian + h
    if sumsq:
        s = flat.double().pow(2).sum(dim=0)
        stats.sumsq = s if stats.sumsq is None else stats.sumsq + s
        stats.sumsq_rows += flat.shape[0]
    if mask is not None:
        flat = flat[~mask.reshape(-1)]
        if flat.shape[0] == 0:
            return
    amax = flat.abs().amax(dim=0)
    stats.calib_absmax = amax if stats.calib_absmax is None else torch.maximum(stats.calib_absmax, amax)
    if rows:
        have = sum(r.shape[0] for r in stats.calib_rows)
        if have < CALIB_SAMPLE_ROWS:
            idx = torch.randperm(flat.shape[0], generator=generator)[: CALIB_SAMPLE_ROWS - have]
            stats.calib_rows.append(flat[idx.to(flat.device)].cpu())


def keep_mask(input_ids: torch.Tensor, positions, token_ids) -> torch.Tensor:
    """(B, T) True where a token's activations stay in high precision: the given token ids anywhere, and the
    given positions (those inside the window)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=input_ids.device)
    mask = torch.isin(input_ids, ids)
    pos = torch.as_tensor([p for p in positions if p < input_ids.shape[1]], dtype=torch.long, device=input_ids.device)
    if len(pos):
        mask[:, pos] = True
    return mask


NEEDS = ("absmax", "rows", "hessian", "sumsq", "spikes", "kept-absmax")


class CalibrationStats:
    """The fp model's activation statistics on one set of calibration windows, computed once and shared by the
    cells of that model. Cells declare what they need (:meth:`declare`) before the first request, so that one
    pass collects it all; whatever is asked for later without having been declared costs another pass (never a
    wrong answer). ``passes`` and ``seconds`` say what it cost."""

    def __init__(self, model, adapter, calib, batch_size: int = 4, tokenizer=None, cache: "CalibrationCache | None" = None):
        self.model, self.adapter, self.calib, self.batch_size, self.tokenizer = model, adapter, calib, batch_size, tokenizer
        # the rewrite ``model`` carries (qsink.quant.apply.rewrite_base_), None for the fp model: a cell takes these
        # statistics only if it starts from a model rewritten the same way
        base = getattr(model, "qsink_base", None)
        self.basis = None if base is None else base[0]
        self.declared: set[str] = set()
        self.spike_settings: tuple[float, float] = (100.0, 1000.0)
        self._inputs: dict[str, LinearInputs] | None = None
        self._have: set[str] = set()
        self._kept: dict[str, LinearInputs] | None = None
        self._spikes: dict | None = None
        self.passes, self.seconds = 0, 0.0
        self.cache, self.loaded = cache, False  # loaded: what a pass would give came from the cache
        if cache is not None:
            found = cache.load(next(model.parameters()).device)
            if found is not None:
                self._inputs, self._have, self._kept = found["inputs"], found["have"], found["kept"]
                self._spikes, self.spike_settings = found["spikes"], found["spike_settings"]
                self.loaded = True

    def _saved(self) -> None:
        if self.cache is not None:
            self.cache.save(self._inputs, self._have, self._kept, self._spikes, self.spike_settings)

    def declare(self, needs) -> None:
        unknown = set(needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"unknown calibration statistics {sorted(unknown)}; known: {', '.join(NEEDS)}")
        self.declared |= set(needs)

    def spike_tokens(self, massive_abs: float = 100.0, massive_ratio: float = 1000.0) -> dict:
        """Token-keep's spike tokens on the calibration windows (the profiler's massive positions and token ids
        that are massive in at least half the windows holding them), from one profile pass of the fp model."""
        if (massive_abs, massive_ratio) != self.spike_settings or self._spikes is None:
            from qsink.measure.collect import profile
            from qsink.measure.options import ProfileSettings

            self._check_fp()
            t0 = time.perf_counter()
            p = profile(self.model, self.tokenizer, self.calib,
                        ProfileSettings(massive_abs=massive_abs, massive_ratio=massive_ratio, attn_windows=0)).to_dict()
            n = self.calib.n_windows
            positions = sorted(d["position"] for d in p["massive"]["positions"] if d["windows"] * 2 >= n)
            counts: dict[int, int] = {}
            for w in range(n):
                for t in set(self.calib.input_ids[w].tolist()):
                    counts[t] = counts.get(t, 0) + 1
            ids = sorted(d["token_id"] for d in p["massive"]["tokens"] if d["windows"] * 2 >= counts.get(d["token_id"], n))
            texts = [d["token"] for d in p["massive"]["tokens"] if d["token_id"] in ids]
            self._spikes, self.spike_settings = {"positions": positions, "token_ids": ids, "tokens": texts}, (massive_abs, massive_ratio)
            self._kept = None  # the kept-token statistics belong to the spikes they were computed with
            self.passes += 1
            self.seconds += time.perf_counter() - t0
            self._saved()
        return self._spikes

    def _declared_inputs(self) -> set[str]:
        """The per-linear statistics a pass collects: those declared, and always the absmax."""
        return (self.declared & {"absmax", "rows", "hessian", "sumsq"}) | {"absmax"}

    def inputs(self, *needs: str) -> dict[str, LinearInputs]:
        """Per block linear (``"layer.name"``): its fp inputs' statistics, with at least ``needs`` collected."""
        if self._inputs is None or not set(needs) <= self._have:
            self._pass(set(needs) | self._declared_inputs(), kept="kept-absmax" in self.declared and self._kept is None)
        return self._inputs

    def kept_inputs(self) -> dict[str, LinearInputs]:
        """The absmax of each linear's inputs without the spike tokens' rows (static scales under token-keep)."""
        if self._kept is None:
            self.spike_tokens(*self.spike_settings)
            self._pass(self._have if self._inputs is not None else self._declared_inputs(), kept=True)
        return self._kept

    def input_absmax(self) -> dict[tuple[int, str], torch.Tensor]:
        """SmoothQuant's statistic: per (layer, linear name), the per-channel absmax of its fp input."""
        out = {}
        for key, st in self.inputs("absmax").items():
            layer, name = key.split(".", 1)
            out[(int(layer), name)] = st.calib_absmax
        return out

    def _check_fp(self) -> None:
        if getattr(self.model, "qsink_originals", None) is not None:
            raise RuntimeError("the shared calibration statistics are the fp model's; this model is being quantized "
                               "in place, so they must be computed before (quantize_ fetches them first)")

    @torch.inference_mode()
    def _pass(self, needs: set[str], kept: bool) -> None:
        self._check_fp()
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(0)  # as a cell's QuantContext: the same row sample
        inputs: dict[str, LinearInputs] = {}
        kept_inputs: dict[str, LinearInputs] = {}
        spec = self.spike_tokens(*self.spike_settings) if kept else None
        state = {"mask": None}
        handles = []

        def hook(key):
            def fn(module, args):
                x = args[0]
                record_input(inputs.setdefault(key, LinearInputs()), x, generator=generator, rows="rows" in needs,
                             hessian="hessian" in needs, sumsq="sumsq" in needs)
                if state["mask"] is not None:
                    record_input(kept_inputs.setdefault(key, LinearInputs()), x, mask=state["mask"], rows=False)
            return fn

        try:
            for l, block in enumerate(self.adapter.blocks(self.model)):
                for name, lin in self.adapter.linears(block).items():
                    handles.append(lin.register_forward_pre_hook(hook(f"{l}.{name}")))
            device = next(self.model.parameters()).device
            for start in range(0, self.calib.n_windows, self.batch_size):
                ids = self.calib.input_ids[start : start + self.batch_size]
                state["mask"] = keep_mask(ids, spec["positions"], spec["token_ids"]).to(device) if spec else None
                self.model(input_ids=ids.to(device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self._inputs, self._have = inputs, set(needs)
        if kept:
            self._kept = kept_inputs
        self.passes += 1
        self.seconds += time.perf_counter() - t0
        self._saved()


CACHE_FORMAT = 1  # bump when what a pass records changes in a way this module's source does not show


_SOURCES: dict[str, str] = {}


def _source_sha(*modules) -> str:
    """The version of the code that computes the statistics: the source of these modules as they were when first
    asked for (in practice, as imported: a file edited while a run goes on does not change its answer)."""
    import inspect

    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    for m in modules:
        if m.__name__ not in _SOURCES:
            _SOURCES[m.__name__] = hashlib.sha256(Path(inspect.getsourcefile(m)).read_bytes()).hexdigest()
        h.update(_SOURCES[m.__name__].encode())
    return h.hexdigest()


_source_sha(sys.modules[__name__])  # this module's version, as imported


class CalibrationCache:
    """:class:`CalibrationStats` kept on disk, so that processes evaluating one cell each (a sweep's jobs) share
    one calibration pass. The file is named by where the statistics come from (model, calibration windows,
    rewrite, dtype, device, batch size: ``where``) and holds them with that identity and the code version that
    computed them; a file whose identity differs (stale code, or a file copied from elsewhere) is recomputed and
    replaced. A file that cannot be read is an error naming the file to delete. Tensors only
    (``torch.load(weights_only=True)``): loading runs no pickled code."""

    def __init__(self, directory: Path, where: dict, modules=()):
        import sys

        import transformers

        self.identity = {"where": where, "code": _source_sha(sys.modules[__name__], *modules), "torch": str(torch.__version__),
                         "transformers": str(transformers.__version__)}
        key = hashlib.sha256(json.dumps(where, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.path = Path(directory) / f"{key}.pt"
        self.stale = False

    def load(self, device="cpu") -> dict | None:
        """The statistics, with the per-channel tensors on ``device`` (the row samples stay on the CPU, as a pass
        keeps them); None when there is no file or it holds another identity."""
        from qsink.errors import QsinkError

        if not self.path.exists():
            return None
        try:
            doc = torch.load(self.path, map_location="cpu", weights_only=True)
            if doc.get("identity") == self.identity:
                return {"inputs": _inputs_from(doc["inputs"], device), "have": set(doc["have"]),
                        "kept": _inputs_from(doc["kept"], device),
                        "spikes": doc["spikes"], "spike_settings": tuple(doc["spike_settings"])}
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same answer
            raise QsinkError(f"the calibration cache {self.path} is unreadable ({type(e).__name__}: {str(e)[:80]}); "
                             f"delete it (rm '{self.path}') and run again to recompute it") from None
        self.stale = True  # another code version or another source: recomputed and replaced
        return None

    def save(self, inputs, have, kept, spikes, spike_settings) -> None:
        from qsink.files import atomic_write_bytes

        doc = {"identity": self.identity, "inputs": _inputs_to(inputs), "have": sorted(have), "kept": _inputs_to(kept),
               "spikes": spikes, "spike_settings": list(spike_settings)}
        buf = io.BytesIO()
        torch.save(doc, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue())


def _inputs_to(inputs: dict[str, LinearInputs] | None) -> dict | None:
    """Plain data for :func:`torch.save`; a tensor equal to one already written for a linear of the same layer (q, k
    and v read the same input, so their absmax, Hessian and imatrix are equal) is written once."""
    if inputs is None:
        return None
    out, seen = {}, {}
    for name, st in inputs.items():
        layer = name.split(".", 1)[0]
        entry = {"rows": [r.cpu() for r in st.calib_rows], "sumsq_rows": st.sumsq_rows}
        for field in ("calib_absmax", "hessian", "sumsq"):
            t = getattr(st, field)
            if t is not None:
                t = t.cpu()
                same = [u for u in seen.get((layer, field), []) if u.shape == t.shape and u.dtype == t.dtype and torch.equal(u, t)]
                t = same[0] if same else t
                if not same:
                    seen.setdefault((layer, field), []).append(t)
            entry[field] = t
        out[name] = entry
    return out


def _inputs_from(doc: dict | None, device) -> dict[str, LinearInputs] | None:
    if doc is None:
        return None
    out, moved = {}, {}

    def on_device(t):  # tensors written once for several linears stay one tensor
        if t is None:
            return None
        if id(t) not in moved:
            moved[id(t)] = t.to(device)
        return moved[id(t)]

    for name, entry in doc.items():
        st = LinearInputs()
        st.calib_absmax, st.hessian, st.sumsq = (on_device(entry[f]) for f in ("calib_absmax", "hessian", "sumsq"))
        st.calib_rows, st.sumsq_rows = list(entry["rows"]), int(entry["sumsq_rows"])
        out[name] = st
    return out
