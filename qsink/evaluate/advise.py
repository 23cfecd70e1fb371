"""``qsink advise``: the cheapest quantization recipe whose KL divergence from the fp model stays under a
budget, chosen from this model's measured sensitivities and then verified by evaluation.

1. **Measure.** For every outlier-handling method and weight format asked for, the model is quantized
   uniformly (one format everywhere, the handling's own rewrite, the activation format if any) and
   :func:`qsink.evaluate.sensitivity.fisher_sensitivity` predicts the KL divergence each linear's
   weights and activations add, on the calibration windows. The whole model's real KL divergence on
   the same windows (:func:`~qsink.evaluate.sensitivity.measured_kld`) scales the predictions of that
   (handling, format) pair, so that each uniform model's prediction is its measurement.
2. **Search.** Within one format family (int, gguf, mx, nv: a recipe a runtime can load), each linear
   chooses one format; the cost is the stored bits of its weights, the predicted KL divergence is
   the sum of the linears' (a multiple-choice knapsack). The search is the greedy walk over each
   linear's lower convex hull of (bits, KLD): all linears start at the cheapest format, and the
   upgrade that removes the most predicted KLD per added bit is taken next, until the budget is
   met. It gives the whole cost/quality path in one pass (every budget at once), and on the hulls it
   is the optimum of the knapsack's linear relaxation, off the integer optimum by at most one
   upgrade; the measurements it rests on are themselves estimates, which a finer search would not
   make better. Formats that are not on a linear's hull are never chosen for it.
3. **Choose.** The cheapest point of any (handling, family) path that meets the budget within
   ``bits_max``; keeping spike tokens in high precision (``token-keep``) competes as a handling
   where activations are quantized. With several activation formats, the one of fewest bits whose
   paths meet the budget is taken first (activation bits decide the kernel a runtime can use, a
   bigger step than a fraction of a weight bit), then the fewest weight bits within it. The
   activation format is one for every linear: per-linear activation exceptions are not searched.
4. **Verify.** The recipe is evaluated like any cell (``run_cells``: perplexity, KL divergence and
   same-top against the fp reference, on the evaluation text, not the calibration windows), beside
   the best uniform format that takes no more bits (:func:`best_uniform`) and llama.cpp's file type
   of the nearest size. Should the
   verified KL divergence miss the budget, the search runs again with the budget tightened by the
   ratio verified / predicted, at most ``rounds`` times.

The recipe is a mixture scheme (:mod:`qsink.quant.mixture`: a format for the model, other formats
for named linears) written into an eval recipe that ``qsink evaluate --recipe`` runs again.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qsink.data.text import Text
from qsink.errors import QsinkError
from qsink.evaluate.plan import Cell
from qsink.evaluate.quantized import calibration_for
from qsink.evaluate.runner import run_cells
from qsink.evaluate.sensitivity import fisher_sensitivity, measured_kld
from qsink.evaluate.settings import EvalSettings
from qsink.files import atomic_write_text
from qsink.models import check_ctx, load, resolve
from qsink.quant import quantize_
from qsink.quant.apply import check_combination
from qsink.quant.mixture import (ACT_BITS, FAMILIES, WEIGHT_FORMATS, act_format, bits_per_weight, ladder, mixture_spec,
                                 register_mixtures)
from qsink.quant.schemes import SCHEMES, Scheme
from qsink.records import RecordStore

ADVICE_VERSION = 1


class BudgetNotMet(QsinkError):
    """No recipe within the bit limit meets the budget (``qsink advise`` exits 2 with this line)."""


@dataclass
class Point:
    """One recipe on a search path: each linear's format, its mean bits per weight and predicted KLD."""
    handling: str
    family: str
    formats: dict[str, str]
    bits: float
    predicted: float


@dataclass
class Measured:
    """What step 1 measured for one (handling, format): per-linear predictions, scaled to the measurement."""
    handling: str
    fmt: str
    predicted_raw: float  # the sum of the per-linear predictions, before scaling
    measured: float  # the real KLD of the uniform model on the calibration windows
    weight: dict[str, float] = field(default_factory=dict)  # per linear, scaled
    act: dict[str, float] = field(default_factory=dict)


def uniform_scheme(fmt: str, act: str | None) -> Scheme:
    return Scheme(f"uniform-{fmt}" + (f"-a{act}" if act else ""), f"every linear {fmt}" + (f", inputs {act}" if act else ""),
                  WEIGHT_FORMATS[fmt], act_format(act))


def measure(fp_model, tok, calib, linears: dict[str, int], handlings: list[str], formats: list[str], act: str | None,
            settings: EvalSettings, cache: Path | None = None, model_pin: str = "", log: Callable[[str], None] = print,
            on_step: Callable[[int], None] | None = None) -> dict[tuple[str, str], Measured]:
    """Step 1 for every (handling, format) that makes sense together; the others are left out with a log
    line. ``cache``: a directory where each pair's measurement is kept (keyed by the model, the
    calibration windows and the settings that change it), so a second budget or an interrupted run
    measures nothing twice."""
    out: dict[tuple[str, str], Measured] = {}
    windows_sha = hashlib.sha256(calib.input_ids.numpy().tobytes()).hexdigest()
    for h in handlings:
        for f in formats:
            scheme = uniform_scheme(f, act)
            try:
                check_combination(scheme, h, settings.options_for(h))
            except QsinkError as e:
                log(f"advise: {f} with {h} left out ({e})")
                if on_step:
                    on_step(1)
                continue
            ident = {"version": ADVICE_VERSION, "model": model_pin, "windows_sha256": windows_sha, "handling": h,
                     "options": settings.options_for(h), "format": f, "act": act, "dtype": settings.dtype,
                     "seed": settings.seed, "linears": len(linears)}
            path = None if cache is None else Path(cache) / f"measure-{_key(ident)[:20]}.json"
            m = _load_measured(path, ident)
            if m is None:
                q = copy.deepcopy(fp_model)
                quantize_(q, scheme, h, calib, tok, settings.options_for(h), sqnr=False, batch_size=settings.batch_size)
                sens = fisher_sensitivity(q, calib, batch_size=1, seed=settings.seed)
                meas = measured_kld(fp_model, q, calib)
                del q
                raw = sum(v["weight"] + v["act"] for v in sens.values())
                scale = meas / raw if raw > 0 else 1.0
                m = Measured(h, f, raw, meas, {n: scale * v["weight"] for n, v in sens.items() if n in linears},
                             {n: scale * v["act"] for n, v in sens.items() if n in linears})
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(path, json.dumps({"identity": ident, "predicted_raw": m.predicted_raw,
                                                        "measured": m.measured, "weight": m.weight, "act": m.act}))
                log(f"advise: {h} {f}: predicted KLD {raw:.4g}, measured {meas:.4g} on the calibration windows")
            out[(h, f)] = m
            if on_step:
                on_step(1)
    return out


def _key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _load_measured(path: Path | None, ident: dict) -> Measured | None:
    """A kept measurement when its file holds this identity; a damaged or foreign file is measured again."""
    if path is None or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if d["identity"] != ident:
            return None
        return Measured(ident["handling"], ident["format"], float(d["predicted_raw"]), float(d["measured"]),
                        {k: float(v) for k, v in d["weight"].items()}, {k: float(v) for k, v in d["act"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def search_path(linears: dict[str, int], in_features: dict[str, int], options: dict[str, Measured], handling: str,
                family: str) -> list[Point]:
    """Step 2 for one (handling, family): the greedy walk over the linears' convex hulls, cheapest first.
    ``options``: format -> what was measured for it; ``linears``: name -> weight count."""
    total = sum(linears.values())
    const = min(sum(m.act.values()) for m in options.values())  # the activations' share (the same for every format)
    hulls: dict[str, list[tuple[float, float, str]]] = {}
    for name, n in linears.items():
        pts = sorted((bits_per_weight(WEIGHT_FORMATS[f], in_features[name]) * n, m.weight[name], f)
                     for f, m in options.items())
        hull: list[tuple[float, float, str]] = []
        for p in pts:
            if hull and p[0] == hull[-1][0]:  # the same cost (a fallback type): keep the lower KLD
                if p[1] < hull[-1][1]:
                    hull[-1] = p
                continue
            if hull and p[1] >= hull[-1][1]:
                continue  # costs more and removes nothing
            while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
                hull.pop()
            hull.append(p)
        hulls[name] = hull
    at = {name: 0 for name in linears}
    cost = sum(h[0][0] for h in hulls.values())
    kld = const + sum(h[0][1] for h in hulls.values())
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], at[name]
        if i + 1 < len(h):
            heapq.heappush(heap, ((h[i + 1][1] - h[i][1]) / (h[i + 1][0] - h[i][0]), name))

    for name in linears:
        push(name)
    path = [Point(handling, family, {n: hulls[n][0][2] for n in linears}, cost / total, kld)]
    formats = dict(path[0].formats)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], at[name]
        cost += h[i + 1][0] - h[i][0]
        kld += h[i + 1][1] - h[i][1]
        at[name] = i + 1
        formats[name] = h[i + 1][2]
        path.append(Point(handling, family, dict(formats), cost / total, kld))
        push(name)
    return path


def _cross(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def choose(paths: list[list[Point]], budget: float, bits_max: float | None) -> Point:
    """Step 3: the cheapest point of any path that meets ``budget`` within ``bits_max`` (ties: lower
    predicted KLD); :class:`BudgetNotMet` names the closest point when none does."""
    ok = [p for path in paths for p in path if p.predicted <= budget and (bits_max is None or p.bits <= bits_max + 1e-9)]
    if ok:
        return min(ok, key=lambda p: (round(p.bits, 9), p.predicted))
    within = [p for path in paths for p in path if bits_max is None or p.bits <= bits_max + 1e-9]
    if not within:
        cheapest = min((p for path in paths for p in path), key=lambda p: p.bits)
        raise BudgetNotMet(f"no recipe fits in {bits_max:g} bits per weight: the cheapest, {cheapest.family} with "
                           f"{cheapest.handling}, needs {cheapest.bits:.3f}; raise --bits-max")
    best = min(within, key=lambda p: p.predicted)
    cap = f"within {bits_max:g} bits per weight " if bits_max is not None else ""
    raise BudgetNotMet(f"no recipe {cap}meets KLD <= {budget:g}: the closest, {describe(best)}, reaches a predicted KLD "
                       f"of {best.predicted:.4g}; raise {'--bits-max or ' if bits_max is not None else ''}the budget")


def describe(p: Point) -> str:
    base = _base_format(p)
    n = sum(1 for f in p.formats.values() if f != base)
    return f"{base} ({p.family}) with {p.handling}, {n} linear(s) raised, {p.bits:.3f} bits per weight"


def _base_format(p: Point, linears: dict[str, int] | None = None) -> str:
    weight: dict[str, float] = {}
    for name, f in p.formats.items():
        weight[f] = weight.get(f, 0) + (linears[name] if linears else 1)
    return max(weight, key=lambda f: (weight[f], f))


def recipe_scheme(p: Point, model_name: str, budget: float, act: str | None, linears: dict[str, int]) -> Scheme:
    """The mixture scheme of a chosen point: the format most weights have, and the others as overrides;
    named after the model, the budget and its content, so another recipe never takes its name."""
    base = _base_format(p, linears)
    overrides = {n: f for n, f in sorted(p.formats.items()) if f != base}
    spec = {"weight": base, "act": act, "overrides": overrides,
            "description": f"qsink advise: {model_name} at KLD <= {budget:g} ({p.family}, {p.handling}), "
                           f"{p.bits:.3f} bits per weight, {len(overrides)} linear(s) raised from {base}"}
    digest = hashlib.sha256(json.dumps({k: spec[k] for k in ("weight", "act", "overrides")}, sort_keys=True).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-").lower()
    name = f"advised-{slug}-kld{budget:g}-{digest[:6]}"
    register_mixtures({name: spec})
    return SCHEMES.get(name)


def gguf_mixture_bits(model, ftype: str) -> float:
    """Mean stored bits per weight of llama.cpp's file type ``ftype`` on this model's block linears."""
    from qsink.models.adapter import adapter_for, n_gqa
    from qsink.quant import get_scheme

    ad, scheme = adapter_for(model), get_scheme(f"gguf-{ftype.lower()}")
    blocks = ad.blocks(model)
    total = bits = 0.0
    for l, block in enumerate(blocks):
        for name, lin in ad.linears(block).items():
            n_in = lin.weight.shape[1]
            total += lin.weight.numel()
            bits += lin.weight.numel() * bits_per_weight(scheme.weight_format_for(name, l, len(blocks), n_in, n_gqa(model)), n_in)
    return bits / total


@dataclass
class Advice:
    model: str
    budget: float
    chosen: Point
    scheme: Scheme
    record_path: Path
    record: dict
    comparisons: list[dict]  # the advised recipe, the uniform format and the GGUF file type of the nearest size
    recipe_path: Path
    rounds: int
    measured: list[dict]
    timing: dict  # seconds: load (model, windows), measure (step 1), search, verify (the evaluations)


def act_list(act) -> list[str | None]:
    """``--act``: None (weights only), one activation format, or several (``int4,int8``), fewest bits first."""
    if act is None or act == "" or act == []:
        return [None]
    names = [a.strip() for a in (act.split(",") if isinstance(act, str) else act) if a and a.strip()]
    for a in names:
        act_format(a)
    names = [None if act_format(a) is None else a.lower() for a in names]
    return sorted(dict.fromkeys(names), key=lambda a: 16.0 if a is None else ACT_BITS[a])


def check_request(budget: float, families: list[str], act: str | None, handlings: list[str] | None,
                  bits_max: float | None, rounds: int, settings: EvalSettings) -> list[str]:
    """Everything about a request that can be refused before a model loads or anything is written; returns the
    handling methods to consider."""
    from qsink.quant.apply import make_handler

    if not budget > 0:
        raise QsinkError(f"--budget must be a positive KL divergence (nats per token), not {budget:g}")
    if bits_max is not None and not bits_max > 0:
        raise QsinkError(f"--bits-max must be a positive number of bits per weight, not {bits_max:g}")
    if rounds < 1:
        raise QsinkError(f"--rounds must be at least 1, not {rounds}")
    if settings.backend != "fake":
        raise QsinkError("advise measures qsink's fake-quantized linears; use --backend fake")
    ladder(list(families))
    acts = act_list(act)
    handlings = list(handlings or (["none", "token-keep"] if acts != [None] else ["none"]))
    for h in handlings:
        make_handler(h, settings.options_for(h))
    return handlings


def advise(spec, budget: float, text: Text, calib_text: Text, settings: EvalSettings, store: RecordStore,
           families: list[str] = ("int", "gguf"), act: str | None = None, handlings: list[str] | None = None,
           bits_max: float | None = None, rounds: int = 3, recipe_out: Path | None = None, data: str | None = None,
           log: Callable[[str], None] = print, progress_factory=None) -> Advice:
    """``qsink advise`` as a function (see the module docstring). Raises :class:`BudgetNotMet` when no
    recipe within ``bits_max`` is predicted to meet ``budget``. ``data``: how the user named ``text``
    (``--data``), for the recipe file."""
    families = list(families)
    handlings = check_request(budget, families, act, handlings, bits_max, rounds, settings)
    import time

    t0 = time.perf_counter()
    res = resolve(spec, log=log)
    fp_model, tok = load(res, dtype=settings.dtype, device=settings.device, log=log)
    check_ctx(fp_model, settings.ctx, res.name)
    calib = calibration_for(tok, settings, calib_text)
    from qsink.models.adapter import adapter_for

    ad = adapter_for(fp_model)
    linears, in_features = {}, {}
    for l, block in enumerate(ad.blocks(fp_model)):
        for name, lin in ad.linears(block).items():
            linears[f"{l}.{name}"] = lin.weight.numel()
            in_features[f"{l}.{name}"] = lin.weight.shape[1]
    formats = [f for fam in families for f in FAMILIES[fam]]
    formats = list(dict.fromkeys(formats))
    timing = {"load_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    acts = act_list(act)
    step = progress_factory(f"{res.name} · sensitivities", len(handlings) * len(formats) * len(acts)) \
        if progress_factory else None
    timing["measure_s"] = timing["search_s"] = 0.0
    refusal = None
    for act in acts:  # the fewest activation bits that can meet the budget, then the fewest weight bits
        t0 = time.perf_counter()
        measured = measure(fp_model, tok, calib, linears, handlings, formats, act, settings, cache=store.root / "advise",
                           model_pin=res.pin, log=log, on_step=step)
        timing["measure_s"] += time.perf_counter() - t0
        if not measured:
            raise QsinkError("no (handling, format) pair of this request can be quantized; see the lines above")
        t0 = time.perf_counter()
        paths = []
        for h in handlings:
            for fam in families:
                opts = {f: measured[(h, f)] for f in FAMILIES[fam] if (h, f) in measured}
                if opts:
                    paths.append(search_path(linears, in_features, opts, h, fam))
        timing["search_s"] += time.perf_counter() - t0
        try:
            choose(paths, budget, bits_max)
            break
        except BudgetNotMet as e:
            refusal = e
            if act != acts[-1]:
                log(f"advise: with {act or 'high-precision'} activations no recipe meets the budget; trying "
                    f"{acts[acts.index(act) + 1] or 'high-precision'} activations")
    else:
        raise BudgetNotMet(f"{refusal} (activations: {', '.join(a or 'high precision' for a in acts)})"
                           if len(acts) > 1 else str(refusal))
    from qsink.quant.gguf_formats import FTYPES

    gguf_sizes = {ft: gguf_mixture_bits(fp_model, ft) for ft in FTYPES}
    del fp_model
    timing["verify_s"] = 0.0
    target = budget
    for round_ in range(1, rounds + 1):
        t0 = time.perf_counter()
        chosen = choose(paths, target, bits_max)
        timing["search_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        scheme = recipe_scheme(chosen, res.name, budget, act, linears)
        uni = best_uniform(chosen, measured, formats, linears, in_features)
        uniform = uniform_scheme(uni, act)
        if uniform.name not in SCHEMES.names():
            register_mixtures({uniform.name: mixture_spec(uniform)})
        near = min(gguf_sizes, key=lambda ft: abs(gguf_sizes[ft] - chosen.bits))
        cells = [Cell("fp"), Cell(scheme.name, chosen.handling), Cell(uniform.name, chosen.handling),
                 Cell(f"gguf-{near.lower()}")]
        outcomes = run_cells([res], list(dict.fromkeys(cells)), text, settings, store, calib_text=calib_text, log=log,
                             progress_factory=progress_factory)
        timing["verify_s"] += time.perf_counter() - t0
        by = {o.cell: o for o in outcomes}
        mine = by[cells[1]]
        if mine.record.get("status") != "ok":
            raise QsinkError(f"the advised recipe failed to evaluate: {mine.record.get('error')}")
        verified = mine.record["metrics"]["kld_mean"]
        log(f"advise: round {round_}: {describe(chosen)}; predicted KLD {chosen.predicted:.4g}, verified {verified:.4g}")
        if verified <= budget or round_ == rounds:
            break
        target *= budget / verified  # the prediction was optimistic by verified / predicted-at-target
    record = mine.record
    record["advice"] = {
        "version": ADVICE_VERSION, "budget_kld": budget, "bits_max": bits_max, "families": families, "act": act,
        "acts_considered": acts,
        "handlings": handlings, "predicted_kld": chosen.predicted, "verified_kld": verified,
        "meets_budget": verified <= budget, "rounds": round_, "search_target_kld": target,
        "bits_per_weight": chosen.bits, "family": chosen.family, "handling": chosen.handling,
        "search": "greedy over each linear's lower convex hull of (stored bits, predicted KLD), within one family",
        "sensitivity": "Fisher of the model's own predictions at each linear's output, one sampled label per position, "
                       "scaled per (handling, format) to the uniform model's measured KLD on the calibration windows",
        "measured": [{"handling": m.handling, "format": m.fmt, "predicted_raw": m.predicted_raw, "measured": m.measured}
                     for m in measured.values()],
        "top_weight_sensitivity": _top(measured, chosen),
        "top_act_sensitivity": _top(measured, chosen, part="act") if act else [],
        "timing": timing,
    }
    store.write(record, mine.path.stem.rsplit("__", 1)[0])  # the same file: the cell's record, now with its advice
    comparisons = []
    for label, cell in (("advised", cells[1]), ("best uniform, no more bits", cells[2]), ("llama.cpp file type, nearest size", cells[3])):
        o = by[cell]
        m = o.record.get("metrics", {})
        q = o.record.get("config", {}).get("quant", {})
        bits = q.get("weight_bits") or (q.get("gguf") or {}).get("bits_per_weight")
        comparisons.append({"what": label, "scheme": cell.scheme, "handling": cell.handling, "bits": bits,
                            "kld": m.get("kld_mean"), "delta_ppl_pct": m.get("delta_ppl_pct"), "same_top": m.get("same_top"),
                            "predicted": chosen.predicted if label == "advised" else None, "path": str(o.path),
                            "tasks": {t: v.get("acc") for t, v in (m.get("tasks") or {}).items()}})
    recipe_path = recipe_out or store.root / f"{scheme.name}.yaml"
    write_recipe(recipe_path, res.spec, scheme, chosen.handling, settings, data)
    return Advice(res.name, budget, chosen, scheme, mine.path, record, comparisons, recipe_path, round_,
                  record["advice"]["measured"], timing)


def best_uniform(chosen: Point, measured: dict, formats: list[str], linears: dict[str, int],
                 in_features: dict[str, int]) -> str:
    """The uniform format to set beside a recipe: of those that take no more bits per weight than it (0.05 of
    slack), the one with the lowest KLD measured in step 1; the nearest in bits when none is that cheap."""
    pool = [f for f in formats if (chosen.handling, f) in measured]
    cheap = [f for f in pool if _uniform_bits(f, linears, in_features) <= chosen.bits + 0.05]
    if cheap:
        return min(cheap, key=lambda f: measured[(chosen.handling, f)].measured)
    return min(pool, key=lambda f: abs(_uniform_bits(f, linears, in_features) - chosen.bits))


def _uniform_bits(fmt: str, linears: dict[str, int], in_features: dict[str, int]) -> float:
    n = sum(linears.values())
    return sum(bits_per_weight(WEIGHT_FORMATS[fmt], in_features[k]) * v for k, v in linears.items()) / n


def _top(measured: dict, p: Point, part: str = "weight", k: int = 8) -> list[dict]:
    """The linears that carry the most predicted KLD in the chosen handling at the recipe's base format."""
    base = _base_format(p)
    m = measured.get((p.handling, base))
    if m is None:
        return []
    d = m.weight if part == "weight" else m.act
    return [{"linear": n, "kld": v, "format": p.formats.get(n)} for n, v in sorted(d.items(), key=lambda kv: -kv[1])[:k]]


def write_recipe(path: Path, model_spec: str, scheme: Scheme, handling: str, settings: EvalSettings, data: str | None) -> None:
    """The advised recipe as an eval recipe: ``qsink evaluate --recipe PATH`` evaluates (or finds) the same cell."""
    import yaml

    doc = {"models": [model_spec], "schemes": [scheme.name], "handling": [handling],
           "mixtures": {scheme.name: mixture_spec(scheme)},
           **({"data": data} if data else {}), "ctx": settings.ctx, "max_tokens": settings.max_tokens, "calib": settings.calib,
           "calib_data": settings.calib_data, "seed": settings.seed, "dtype": settings.dtype}
    if settings.handling_options:
        doc["handling_options"] = list(settings.handling_options)
    if settings.tasks:
        doc.update(tasks=list(settings.tasks), limit=settings.limit, num_fewshot=settings.num_fewshot)
    header = (f"# qsink advise: {scheme.description}\n"
              f"# qsink evaluate --recipe {path} evaluates it again (the same cell: found, not recomputed)\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), header + yaml.safe_dump(doc, sort_keys=False))
