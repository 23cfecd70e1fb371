"""``qsink study``: the tables and plots of a variants-vs-quantization study, from records alone.

A study is a directory of records from ``qsink sweep``: trained variants (model names
``NAME-seedN`` group the seeds of one variant) and reference models, each evaluated under schemes x
outlier handling. This module turns them into

* ``leaderboard.csv`` (one row per cell, every column :func:`qsink.results.leaderboard` derives);
* Markdown tables, written into marked blocks of existing Markdown files
  (``<!-- qsink-study:NAME -->`` ... ``<!-- /qsink-study:NAME -->``) so that prose around them
  stays as written and the numbers are always the command's;
* plots (PNG).

Statistics across seeds are the mean and the range (min to max); with two or three seeds a standard
deviation would claim more than the data holds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from qsink.files import atomic_write_text
from qsink.errors import QsinkError
from qsink.validate import check_file_target
from qsink.results.markdown import fmt, table
from qsink.results.leaderboard import correlations, kind_table, leaderboard
from qsink.records.record import PROFILE_FIELDS
from qsink.plotting import MARKERS, plt, save_figure
from qsink.results.plots import plot_delta_vs_spike, plot_heatmap

SEED = re.compile(r"^(?P<group>.+?)-seed(?P<seed>\d+)$")
HEADLINE_SCHEMES = ("w8a8-static", "w4a4", "nvfp4")
HANDLING_ORDER = ("none", "smoothquant", "hadamard", "token-keep", "clip", "gptq", "quarot", "spinquant", "spinquant+gptq",
                  "llm-int8", "awq", "awq+gptq",
                  "imatrix")


def split_seed(name: str) -> tuple[str, int | None]:
    """``bb-sandwich-seed1`` -> (``bb-sandwich``, 1); names without a seed suffix are their own group."""
    m = SEED.match(str(name))
    return (m["group"], int(m["seed"])) if m else (str(name), None)


def study_frame(records: list[dict]) -> pd.DataFrame:
    df = leaderboard(records, sort="model")
    if df.empty:
        raise QsinkError("no evaluation records in the study directory; run 'qsink sweep RECIPE' first")
    for col in PROFILE_FIELDS:  # records evaluated with profile_samples: 0 carry no profile; their statistics are blank
        if col not in df.columns:
            df[col] = np.nan
    parts = df["model"].map(split_seed)
    df["group"] = [p[0] for p in parts]
    df["seed"] = [p[1] for p in parts]
    return df


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _fp(df: pd.DataFrame) -> pd.DataFrame:
    """One fp row per model: its perplexity and profile."""
    ok = _ok(df)
    return ok[ok["scheme"] == "fp"].drop_duplicates("model")


def spread(values, spec: str = "{:+.2f}") -> str:
    """Mean, and the range in brackets when there is more than one value."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "-"
    if len(v) == 1:
        return spec.format(v[0])
    return f"{spec.format(np.mean(v))} [{spec.format(min(v))}, {spec.format(max(v))}]"


def _groups_in_order(df: pd.DataFrame) -> list[str]:
    """Groups by first appearance in creation order (the sweep's order: baseline first)."""
    return list(dict.fromkeys(df.sort_values("created")["group"]))


def _delta(df: pd.DataFrame, group: str, scheme: str, handling: str) -> list[float]:
    g = df[(df["group"] == group) & (df["scheme"] == scheme) & (df["handling"] == handling)]
    return list(g["delta_ppl_pct"].dropna())


def models_table(df: pd.DataFrame) -> str:
    """One row per model: fp perplexity and the outlier profile on the evaluation text."""
    fp = _fp(df)
    rows = []
    for g in _groups_in_order(df):
        for _, r in fp[fp["group"] == g].sort_values("model").iterrows():
            rows.append({"model": r["model"], "text": r["data"], "fp ppl": fmt(r["ppl"], "{:.4g}"),
                         "spike max\\|h\\|": fmt(r.get("spike_magnitude"), "{:,.0f}"),
                         "top-1/median": fmt(r.get("top1_median_max"), "{:.0f}"),
                         "max kurtosis": fmt(r.get("kurtosis_max"), "{:.0f}"),
                         "linear-input max/median": fmt(r.get("linear_input_ratio_max"), "{:.0f}"),
                         "massive": "yes" if r.get("has_massive") else "no",
                         "sink ratio": fmt(r.get("sink_ratio"), "{:.2f}"),
                         "mean α(BOS)": fmt(r.get("alpha_mean"), "{:.2f}")})
    return table(rows)


def variants_table(df: pd.DataFrame, baseline: str) -> str:
    """One row per variant (seeds pooled): spike and sink ratio against the baseline's, and the damage
    of the two outlier-sensitive schemes without handling."""
    fp = _fp(df)
    ok = _ok(df)
    base_spike = fp[fp["group"] == baseline]["spike_magnitude"].mean()
    rows = []
    for g in _groups_in_order(df):
        f = fp[fp["group"] == g]
        if f.empty or f["data"].iloc[0] != fp[fp["group"] == baseline]["data"].iloc[0]:
            continue
        spike = f["spike_magnitude"].mean()
        rows.append({"variant": g, "seeds": len(f), "fp ppl": spread(f["ppl"], "{:.3f}"),
                     "spike": spread(f["spike_magnitude"], "{:,.0f}"),
                     "spike / baseline": fmt(spike / base_spike, "{:.3f}"),
                     "linear-input max/median": spread(f.get("linear_input_ratio_max", []), "{:.0f}"),
                     "sink ratio": spread(f["sink_ratio"], "{:.2f}"),
                     "mean α(BOS)": spread(f["alpha_mean"], "{:.2f}"),
                     **{f"Δppl % {s}": spread(_delta(ok, g, s, "none")) for s in ("w8a8-static", "w4a4")}})
    return table(rows)


def schemes_table(df: pd.DataFrame, handling: str = "none") -> str:
    """Variant x scheme: Δppl % with one handling method (seeds pooled)."""
    ok = _ok(df)
    schemes = _scheme_order(ok)
    rows = []
    for g in _groups_in_order(df):
        if ok[(ok["group"] == g) & (ok["handling"] == handling)].empty:
            continue
        rows.append({"variant": g, **{s: spread(_delta(ok, g, s, handling)) for s in schemes}})
    return table(rows)


def handling_summary(df: pd.DataFrame, data: str) -> pd.DataFrame:
    """Per scheme and handling, over the models evaluated on ``data`` that have every cell of the
    scheme: mean Δppl % and the share of the no-handling gap closed, ``1 - mean(h) / mean(none)``."""
    ok = _ok(df)
    ok = ok[(ok["data"] == data) & (ok["scheme"] != "fp")]
    out = []
    for scheme in _scheme_order(ok):
        g = ok[ok["scheme"] == scheme]
        piv = g.pivot_table(index="model", columns="handling", values="delta_ppl_pct", aggfunc="first").dropna()
        if "none" not in piv.columns or piv.empty:
            continue
        gap = piv["none"].mean()
        for h in piv.columns:
            out.append({"scheme": scheme, "handling": h, "models": len(piv), "mean": piv[h].mean(),
                        "median": piv[h].median(), "closed": (1 - piv[h].mean() / gap) if gap > 0 else float("nan"),
                        "better than none": int((piv[h] < piv["none"]).sum())})
    return pd.DataFrame(out)


def handling_table(df: pd.DataFrame, data: str) -> str:
    s = handling_summary(df, data)
    if s.empty:
        return "_(no data)_"
    rows = []
    for scheme, g in s.groupby("scheme", sort=False):
        g = g.set_index("handling")
        n = int(g["models"].iloc[0])
        row = {"scheme": scheme, "models": n}
        for h in HANDLING_ORDER:
            if h in g.index:
                cell = fmt(g.loc[h, "mean"], "{:+.3g}")
                if h != "none":
                    cell += f" ({fmt(100 * g.loc[h, 'closed'], '{:.0f}')} %, {g.loc[h, 'better than none']}/{n})"
                row[h] = cell
        others = g.drop(index="none")["mean"]
        row["best"] = others.idxmin() if len(others) and others.min() < g.loc["none", "mean"] else "none"
        rows.append(row)
    cols = ["scheme", "models", *HANDLING_ORDER, "best"]
    rows = [{c: r.get(c, "-") for c in cols if any(c in rr for rr in rows)} for r in rows]
    return table(rows)


def _scheme_order(df: pd.DataFrame) -> list[str]:
    return [x for x in dict.fromkeys(df.sort_values("created")["scheme"]) if x != "fp"]


def spearman_table(df: pd.DataFrame, data: str, stat: str = "spike") -> str:
    """Scheme x handling: Spearman's rho across models between the fp model's ``stat`` (a key of
    :data:`qsink.results.leaderboard.STATS`) and Δppl %, with its permutation p-value and the number of models."""
    c = correlations(_ok(df))
    c = c[c["data"] == data]
    if c.empty:
        return "_(no data)_"
    handlings = [h for h in HANDLING_ORDER
                 if h in set(c["handling"])]
    rows = []
    for scheme in _scheme_order(df[df["data"] == data]):
        g = c[c["scheme"] == scheme].set_index("handling")
        if g.empty:
            continue
        row = {"scheme": scheme, "models": int(g["n"].max())}
        for h in handlings:
            if h in g.index and not math.isnan(g.loc[h, f"rho_{stat}"]):
                row[h] = f"{g.loc[h, f'rho_{stat}']:+.2f} (p {g.loc[h, f'p_{stat}']:.3f})"
            else:
                row[h] = "-"
        rows.append(row)
    return table(rows)


def headline_table(df: pd.DataFrame, groups: list[str] | None = None) -> str:
    """Per model group: spike, sink ratio and, for the outlier-sensitive schemes, Δppl % without
    handling and with the best method for that scheme and group."""
    ok, fp = _ok(df), _fp(df)
    rows = []
    for g in groups or _groups_in_order(df):
        f = fp[fp["group"] == g]
        if f.empty:
            continue
        row = {"model": g, "seeds": len(f), "text": f["data"].iloc[0],
               "spike": spread(f["spike_magnitude"], "{:,.0f}"), "sink ratio": spread(f["sink_ratio"], "{:.2f}")}
        for s in HEADLINE_SCHEMES:
            none = _delta(ok, g, s, "none")
            best, best_v = None, None
            for h in sorted(set(ok[(ok["group"] == g) & (ok["scheme"] == s)]["handling"]) - {"none"}):
                v = _delta(ok, g, s, h)
                if v and (best_v is None or np.mean(v) < np.mean(best_v)):
                    best, best_v = h, v
            row[f"{s}"] = spread(none)
            row[f"{s} best"] = f"{spread(best_v)} {best}" if best else "-"
        rows.append(row)
    return table(rows)


def agreement_table(df: pd.DataFrame) -> str:
    """Per model group, scheme and handling (seeds pooled): agreement with the group's fp model (mean KLD,
    same top, Δp RMS) beside Δppl %; only cells whose records carry the agreement statistics."""
    ok = _ok(df)
    if "kld_mean" not in ok.columns or ok["kld_mean"].isna().all():
        return "_(no agreement statistics in these records; cells evaluated since the KL divergence landed have them)_"
    ok = ok.dropna(subset=["kld_mean"])
    rows = []
    for g in _groups_in_order(ok):
        for scheme in _scheme_order(ok[ok["group"] == g]):
            for h in [h for h in HANDLING_ORDER if h in set(ok["handling"])] + sorted(set(ok["handling"]) - set(HANDLING_ORDER)):
                c = ok[(ok["group"] == g) & (ok["scheme"] == scheme) & (ok["handling"] == h)]
                if c.empty:
                    continue
                rows.append({"model": g, "scheme": scheme, "handling": h, "KLD": spread(c["kld_mean"], "{:.4f}"),
                             "same top": spread(c["same_top"], "{:.3f}"), "Δp RMS": spread(c["dp_rms"], "{:.4f}"),
                             "Δppl %": spread(c["delta_ppl_pct"])})
    return table(rows)


KIND_SCHEMES = HEADLINE_SCHEMES  # the outlier-sensitive schemes: their damage is split by kind of position


def agreement_kinds_table(records: list[dict]) -> str:
    """Mean KLD by kind of position (massive activation, sink, delimiter, other; n = positions) for the
    outlier-sensitive schemes, every handling method."""
    k = kind_table(records)
    if k.empty:
        return "_(no agreement statistics in these records)_"
    k = k[k["scheme"].isin(KIND_SCHEMES)]
    rows = []
    for _, r in k.iterrows():
        row = {"model": r["model"], "scheme": r["scheme"], "handling": r["handling"]}
        for kind in ("massive", "sink", "delimiter", "other"):
            row[f"KLD {kind} (n)"] = f"{fmt(r[f'KLD {kind}'], '{:.4f}')} ({int(r[f'n {kind}'])})"
        rows.append(row)
    return table(rows)


def gguf_table(records: list[dict]) -> str:
    """Per model, llama.cpp file type and imatrix (its rule has a branch for one): the types llama.cpp's per-tensor
    rule gave the block linears, how many fell back to another type (rows that do not split into blocks), and the bits per weight of those linears."""
    rows, seen = [], set()
    for r in records:
        g = r.get("config", {}).get("quant", {}).get("gguf") if r.get("status") == "ok" else None
        if not isinstance(g, dict):
            continue
        model = r["config"]["model"]["name"]
        imatrix = r["identity"].get("handling") == "imatrix"  # llama.cpp's rule has an imatrix branch
        if (model, g["ftype"], imatrix) in seen:  # the activation rounding does not change the types
            continue
        seen.add((model, g["ftype"], imatrix))
        counts = sorted(g["type_counts"].items(), key=lambda kv: -kv[1])
        rows.append({"model": model, "file type": g["ftype"], "imatrix": "yes" if imatrix else "no", "linears": len(g["types"]),
                     "types chosen (count)": ", ".join(f"{t} ({n})" for t, n in counts),
                     "fallbacks": len(g.get("fallbacks", {})), "bits / weight": f"{g['bits_per_weight']:.3f}"})
    return table(rows) if rows else "_(no GGUF cells in these records)_"


LINEAR_INPUTS = {  # which activation a linear reads, by the name's last part
    "q_proj": "attention input (q, k, v)", "k_proj": "attention input (q, k, v)", "v_proj": "attention input (q, k, v)",
    "o_proj": "attention output (o)", "gate_proj": "FFN input (gate, up)", "up_proj": "FFN input (gate, up)",
    "down_proj": "FFN hidden (down)"}


READS_RESIDUAL = ("attention input (q, k, v)", "FFN input (gate, up)")  # the normed residual stream, channel by channel


def imatrix_table(records: list[dict], profiles: list[dict] | None = None) -> str:
    """Per model and input a linear reads: the share of the importance matrix's mass (mean x^2 per input channel) in
    its top-1 channel, median and max over the linears, the most frequent top-1 channel, and how many linears have
    one of the residual spike channels of the model's profile as their top-1 (the attention and FFN inputs read the
    residual stream through their norm)."""
    spikes = {}
    for d in profiles or []:
        spikes.setdefault((d.get("model") or {}).get("name"), d.get("summary", {}).get("spike_channels", []))
    rows, seen = [], set()
    for r in records:
        h = r.get("config", {}).get("quant", {}).get("handling") if r.get("status") == "ok" else None
        if not isinstance(h, dict) or h.get("name") != "imatrix" or not h.get("per_linear"):
            continue
        model = r["config"]["model"]["name"]
        if model in seen:  # the imatrix is the fp model's, the same for every scheme
            continue
        seen.add(model)
        groups: dict[str, list[tuple[str, dict]]] = {}
        for name, v in h["per_linear"].items():
            groups.setdefault(LINEAR_INPUTS.get(name.rsplit(".", 1)[-1], "other"), []).append((name, v))
        for inp in dict.fromkeys(LINEAR_INPUTS.values()):
            items = groups.get(inp)
            if not items:
                continue
            share = np.array([v["top1_share"] for _, v in items])
            worst = items[int(share.argmax())][0]
            channels = pd.Series([v["top1_channel"] for _, v in items]).value_counts()
            spike = spikes.get(model, [])
            on_spike = {c: int(channels.get(c, 0)) for c in spike}
            rows.append({"model": model, "input": inp, "linears": len(items),
                         "top-1 share median": f"{np.median(share):.3f}",
                         "top-1 share max (linear)": f"{share.max():.3f} ({worst})",
                         "commonest top-1 channel (linears)": f"{channels.index[0]} ({channels.iloc[0]})",
                         "linears whose top-1 is a spike channel": (
                             "- (reads no residual channels)" if inp not in READS_RESIDUAL else
                             ", ".join(f"{c}: {n}" for c, n in on_spike.items()) or "- (no profile)")})
    return table(rows) if rows else "_(no imatrix cells in these records)_"


def spinquant_table(records: list[dict], every: int = 10) -> str:
    """Per model and SpinQuant training (the records that trained it, not those that reused its rotations): the loss
    of the quantized network on all calibration windows at the Hadamard start and after training, the training
    curve (the mean single-window loss of each run of ``every`` steps), time, and the largest orthogonality error
    after any step."""
    rows = []
    for r in records:
        h = r.get("config", {}).get("quant", {}).get("handling") if r.get("status") == "ok" else None
        if not isinstance(h, dict) or not str(h.get("name", "")).startswith("spinquant") or h.get("from_cache", True):
            continue
        curve = h.get("loss_curve") or []
        means = [np.mean(curve[i : i + every]) for i in range(0, len(curve), every)]
        rows.append({"model": r["config"]["model"]["name"], "trained for": r["identity"]["scheme"],
                     "steps": h["steps"], "lr": h["lr"], "loss at Hadamard": f"{h['loss_at_hadamard']:.4f}",
                     "loss learned": f"{h['loss_learned']:.4f}",
                     f"curve (mean of {every} steps)": " ".join(f"{m:.3f}" for m in means),
                     "minutes": f"{h['train_s'] / 60:.1f}", "max ‖RᵀR − I‖": f"{h['max_orthogonality_error']:.1e}",
                     "R1": "learned" if h.get("r1") == "learned" else "not learned"})
    return table(rows) if rows else "_(no SpinQuant training in these records)_"


def _weight_cells(records: list[dict]) -> list[dict]:
    """Quantized ok cells with their stored bits per weight and KLD: model, scheme, handling, kind
    (advised, uniform int / gguf, llama.cpp file type), bits, kld, and the advice block where there is one."""
    out = []
    for r in records:
        if r.get("status") != "ok" or r.get("identity", {}).get("scheme") in (None, "fp"):
            continue
        q = r.get("config", {}).get("quant", {})
        bits = q.get("weight_bits") or (q.get("gguf") or {}).get("bits_per_weight")
        kld = r.get("metrics", {}).get("kld_mean")
        if bits is None or kld is None:
            continue
        scheme = r["identity"]["scheme"]
        kind = ("advised" if "advice" in r else "uniform gguf" if scheme.startswith("uniform-q") else
                "uniform int" if scheme.startswith("uniform-int") else "llama.cpp file type" if scheme.startswith("gguf-")
                and not scheme.endswith("-cpu") else None)
        if kind is None:
            continue
        out.append({"model": r["config"]["model"]["name"], "scheme": scheme, "handling": r["identity"]["handling"],
                    "kind": kind, "bits": float(bits), "kld": float(kld), "advice": r.get("advice"),
                    "delta_ppl_pct": r.get("metrics", {}).get("delta_ppl_pct")})
    return out


def advise_table(records: list[dict]) -> str:
    """Per advised recipe: the budget, what was predicted and verified, its bits per weight, the best uniform format
    of no more bits (0.05 of slack) and the llama.cpp file type nearest in bits, with their measured KLD."""
    cells = _weight_cells(records)
    rows = []
    for c in sorted((c for c in cells if c["kind"] == "advised"), key=lambda c: (c["model"], c["advice"]["budget_kld"])):
        a = c["advice"]
        same = [o for o in cells if o["model"] == c["model"] and o["handling"] == c["handling"]]

        def nearest(kinds):
            pool = [o for o in same if o["kind"] in kinds]
            return min(pool, key=lambda o: abs(o["bits"] - c["bits"])) if pool else None

        cheap = [o for o in same if o["kind"] in ("uniform int", "uniform gguf") and o["bits"] <= c["bits"] + 0.05]
        uni = min(cheap, key=lambda o: o["kld"]) if cheap else nearest(("uniform int", "uniform gguf"))
        ft = nearest(("llama.cpp file type",))
        show = lambda o: "-" if o is None else f"{o['scheme']}: {o['bits']:.3f} b, KLD {o['kld']:.4f}"  # noqa: E731
        rows.append({"model": c["model"], "budget": f"{a['budget_kld']:g}", "family / handling": f"{a['family']} / {a['handling']}",
                     "bits / weight": f"{c['bits']:.3f}", "predicted KLD": f"{a['predicted_kld']:.4f}",
                     "verified KLD": f"{c['kld']:.4f}", "meets": "yes" if a["meets_budget"] else "no",
                     "rounds": a["rounds"], "best uniform, no more bits": show(uni), "llama.cpp file type, nearest size": show(ft)})
    return table(rows) if rows else "_(no advised recipes in these records)_"


def advise_recipes_table(records: list[dict]) -> str:
    """What each advised recipe is: its base format and the linears it raises, by format."""
    rows = []
    for r in records:
        a = r.get("advice")
        mix = r.get("config", {}).get("quant", {}).get("mixture") if a else None
        if not mix:
            continue
        counts: dict[str, int] = {}
        for f in mix.values():
            counts[f] = counts.get(f, 0) + 1
        base = max(counts, key=lambda f: counts[f])
        raised: dict[str, list[str]] = {}
        for name, f in mix.items():
            if f != base:
                raised.setdefault(f, []).append(name)
        kinds = lambda names: ", ".join(f"{k} {v}" for k, v in pd.Series([n.split(".", 1)[1] for n in names]).value_counts().items())  # noqa: E731
        rows.append({"model": r["config"]["model"]["name"], "budget": f"{a['budget_kld']:g}", "scheme": r["identity"]["scheme"],
                     "most linears": f"{base} ({counts[base]} of {len(mix)})",
                     "raised (linears by kind)": "; ".join(f"{f}: {kinds(n)}" for f, n in sorted(raised.items())) or "-"})
    return table(rows) if rows else "_(no advised recipes in these records)_"


def plot_advise(records: list[dict], plots_dir: Path) -> dict[str, Path]:
    """One plot per model: measured KLD against stored bits per weight for the uniform formats, llama.cpp's file
    types and the advised recipes (stars, with their budgets as dashed lines)."""
    cells = _weight_cells(records)
    made = {}
    for model in dict.fromkeys(c["model"] for c in cells if c["kind"] == "advised"):
        mine = [c for c in cells if c["model"] == model and (c["handling"] == "none" or c["kind"] == "advised")]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        floor = 1e-4  # a format on the model's own GGUF grid has KLD 0, which a log axis cannot show
        style = {"uniform int": ("s", "tab:blue"), "uniform gguf": ("o", "tab:green"),
                 "llama.cpp file type": ("^", "tab:gray"), "advised": ("*", "tab:red")}
        for kind, (marker, color) in style.items():
            pts = sorted((c for c in mine if c["kind"] == kind), key=lambda c: c["bits"])
            if not pts:
                continue
            ax.plot([c["bits"] for c in pts], [max(c["kld"], floor) for c in pts], marker=marker, color=color,
                    ls="-" if kind.startswith("uniform") else "none", ms=11 if kind == "advised" else 6, label=kind)
            for c in pts:
                label = (f"≤{c['advice']['budget_kld']:g}" if kind == "advised" else
                         c["scheme"].removeprefix("uniform-").removeprefix("gguf-"))
                label += " (KLD < 1e-4, drawn at 1e-4)" if c["kld"] < floor else ""
                ax.annotate(label, (c["bits"], max(c["kld"], floor)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        for c in (c for c in mine if c["kind"] == "advised"):
            ax.axhline(c["advice"]["budget_kld"], color="tab:red", lw=0.6, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("stored bits per weight (block linears, scales included)", fontsize=8)
        ax.set_ylabel("mean KL divergence from fp (log)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title(f"{model}: advised recipes against uniform formats and llama.cpp file types", fontsize=9)
        made[f"advise-{model}"] = save_figure(fig, Path(plots_dir) / f"advise-{model}.png")
    return made


def _group_means(df: pd.DataFrame) -> pd.DataFrame:
    """Cells averaged over seeds, with the group as the model name (for the heatmap)."""
    ok = _ok(df)
    keys = ["group", "scheme", "handling"]
    m = ok.groupby(keys, sort=False)[["delta_ppl_pct", "spike_magnitude"]].mean().reset_index()
    return m.rename(columns={"group": "model"}).assign(status="ok")


def plot_sinks_vs_spikes(df: pd.DataFrame, path: Path) -> Path | None:
    """Each model's spike magnitude against its sink ratio: claims (a) and (b) in one picture."""
    fp = _fp(df).dropna(subset=["spike_magnitude", "sink_ratio"])
    if fp.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (g, f) in enumerate(fp.groupby("group", sort=False)):
        ax.scatter(f["spike_magnitude"], f["sink_ratio"], marker=MARKERS[i % len(MARKERS)], s=40, alpha=0.85, label=g)
    ax.set_xscale("log")
    ax.set_xlabel("spike magnitude (max |h| on the evaluation text)", fontsize=8)
    ax.set_ylabel("sink ratio (share of heads parked on BOS)", fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Spikes and sinks per trained model (one point per seed)", fontsize=9)
    return save_figure(fig, path)


def plot_handling(df: pd.DataFrame, data: str, path: Path, title: str) -> Path | None:
    """Mean Δppl % per scheme, one bar per handling method (symmetric-log y)."""
    s = handling_summary(df, data)
    if s.empty:
        return None
    schemes = list(dict.fromkeys(s["scheme"]))
    handlings = [h for h in HANDLING_ORDER
                 if h in set(s["handling"])]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(schemes) + 2), 3.8))
    width = 0.8 / len(handlings)
    for j, h in enumerate(handlings):
        vals = [s[(s["scheme"] == sc) & (s["handling"] == h)]["mean"].mean() for sc in schemes]
        ax.bar(np.arange(len(schemes)) + (j - (len(handlings) - 1) / 2) * width, vals, width, label=h)
    ax.set_xticks(range(len(schemes)), schemes, fontsize=8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("mean Δppl % (symlog)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, title="handling", title_fontsize=7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


MARK = re.compile(r"(<!-- qsink-study:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /qsink-study:(?P=name) -->)", re.S)


def fill_blocks(text: str, blocks: dict[str, str], source: str = "") -> tuple[str, list[str]]:
    """Replace the body of every marked block in ``text``; return the new text and the names filled."""
    unknown = [m["name"] for m in MARK.finditer(text) if m["name"] not in blocks]
    if unknown:
        raise QsinkError(f"{source}: unknown study block(s) {', '.join(unknown)}; known: {', '.join(sorted(blocks))}")
    filled = []

    def sub(m):
        filled.append(m["name"])
        return m.group(1) + blocks[m["name"]].rstrip("\n") + "\n" + m.group(4)

    return MARK.sub(sub, text), filled


def build_study(records: list[dict], baseline: str, reference_data: str | None = None,
                plots_dir: Path | None = None, profiles: list[dict] | None = None) -> tuple[pd.DataFrame, dict[str, str], dict[str, Path]]:
    """The study's leaderboard, its Markdown blocks by name, and the plots written by name."""
    df = study_frame(records)
    if baseline not in set(df["group"]):
        raise QsinkError(f"no model group {baseline!r} in the records (groups: {', '.join(_groups_in_order(df))}); "
                         "pass --baseline with one of them")
    data = df[df["group"] == baseline]["data"].iloc[0]
    others = [d for d in dict.fromkeys(df["data"]) if d != data]
    ref_data = reference_data or (others[0] if others else None)
    trained = df[df["data"] == data]
    blocks = {
        "models": models_table(df),
        "variants": variants_table(df, baseline),
        "schemes": schemes_table(trained, "none"),
        "schemes-best": "\n\n".join(f"**{h}**\n\n" + schemes_table(trained, h)
                                    for h in HANDLING_ORDER[1:]
                                    if not _ok(trained)[_ok(trained)["handling"] == h].empty),
        "handling": handling_table(df, data),
        "spearman": spearman_table(df, data, "spike"),
        "spearman-kurtosis": spearman_table(df, data, "kurtosis"),
        "spearman-linear": spearman_table(df, data, "linear"),
        "headline": headline_table(df),
        "agreement": agreement_table(df),
        "agreement-kinds": agreement_kinds_table(records),
        "gguf-types": gguf_table(records),
        "imatrix": imatrix_table(records, profiles),
        "spinquant": spinquant_table(records),
        "advise": advise_table(records),
        "advise-recipes": advise_recipes_table(records),
    }
    none = "_(no records on a second text)_"
    blocks.update({"handling-reference": none, "reference-cells": none})
    if ref_data:
        blocks["handling-reference"] = handling_table(df, ref_data)
        ref = df[df["data"] == ref_data]
        blocks["reference-cells"] = schemes_table(ref, "none") + "\n\n" + "\n\n".join(
            f"**{h}**\n\n" + schemes_table(ref, h) for h in HANDLING_ORDER[1:]
            if not _ok(ref)[_ok(ref)["handling"] == h].empty)
    plots: dict[str, Path] = {}
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        made = {
            "delta-vs-spike": plot_delta_vs_spike(trained, plots_dir / "delta-vs-spike.png"),
            "heatmap": plot_heatmap(_group_means(df), plots_dir / "heatmap.png", models=_groups_in_order(df),
                                    schemes=_scheme_order(df)),
            "sinks-vs-spikes": plot_sinks_vs_spikes(trained, plots_dir / "sinks-vs-spikes.png"),
            "handling": plot_handling(df, data, plots_dir / "handling.png",
                                      f"Mean Δppl % over the {trained['model'].nunique()} trained models ({data})"),
        }
        if ref_data:
            made["handling-reference"] = plot_handling(df, ref_data, plots_dir / "handling-reference.png",
                                                       f"Δppl % of {', '.join(df[df['data'] == ref_data]['group'].unique())} ({ref_data})")
        made.update(plot_advise(records, plots_dir))
        plots = {name: p for name, p in made.items() if p}
    return df, blocks, plots


PLOTS = ("delta-vs-spike", "heatmap", "sinks-vs-spikes", "handling", "handling-reference")


def write_study(records: list[dict], baseline: str, csv: Path | None, plots_dir: Path | None,
                fill: list[Path], profiles: list[dict] | None = None) -> dict:
    """Write the CSV and plots, then fill the marked blocks of each file in ``fill`` (plot blocks
    ``plot-NAME`` link the PNG relative to the file)."""
    for f in fill:
        if not Path(f).is_file():
            raise QsinkError(f"{f} does not exist; create it with blocks such as <!-- qsink-study:headline --> "
                             "<!-- /qsink-study:headline --> where the tables go")
    if csv:
        check_file_target(csv, "--csv")
    df, blocks, plots = build_study(records, baseline, plots_dir=plots_dir, profiles=profiles)
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(csv, df.drop(columns=["group", "seed"]).to_csv(index=False))
    filled = {}
    for f in map(Path, fill):
        here = dict(blocks)
        for name in list(PLOTS) + [n for n in plots if n not in PLOTS]:
            p = plots.get(name)
            here[f"plot-{name}"] = (f"![{name}]({Path(_relpath(p, f.parent)).as_posix()})" if p else
                                    "_(no plot: pass --plots DIR)_" if plots_dir is None else "_(no plot: no data for it)_")
        text, names = fill_blocks(f.read_text(), here, str(f))
        if not names:
            raise QsinkError(f"{f} has no study blocks; add e.g. <!-- qsink-study:headline --> and "
                             f"<!-- /qsink-study:headline -->; known blocks: {', '.join(sorted(here))}")
        atomic_write_text(f, text)
        filled[str(f)] = names
    return {"rows": len(df), "columns": len(df.columns), "plots": [str(p) for p in plots.values()], "filled": filled}


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


__all__ = ["build_study", "fill_blocks", "handling_summary", "split_seed", "spread", "study_frame", "write_study"]
