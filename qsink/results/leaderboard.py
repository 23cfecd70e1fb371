"""Leaderboard: one row per record, columns derived from the record's fields; group summaries and the
rank correlation between a model's outliers and its quantization error."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

PROFILE = ["spike_magnitude", "top1_median_max", "kurtosis_max", "linear_input_ratio_max", "sink_ratio", "has_massive"]
FRONT = ["model", "scheme", "handling", "data", "ctx", "status", "ppl", "delta_ppl", "delta_ppl_pct", "bpb",
         "kld_mean", "same_top", "dp_rms",
         *PROFILE, "sqnr_db_mean", "sqnr_db_min", "kept_token_fraction", "nll", "n_scored", "tokens_per_s", "wall_s"]
NOT_FLATTENED = ("sqnr_db", "types", "fallbacks", "per_linear")  # per-linear dicts stay in the record, not in columns
MIN_MODELS_FOR_RHO = 5
# profile statistics ranked against the damage: the residual stream's largest value, the largest
# per-layer kurtosis, and the largest max/median ratio of per-channel absmax over any linear's input
# (what an activation quantizer's shared scale actually meets; pre-norm readers see a normalised stream)
STATS = {"spike": "spike_magnitude", "kurtosis": "kurtosis_max", "linear": "linear_input_ratio_max"}  # below this a rank correlation is reported with a warning note


def task_short(name: str) -> str:
    return name.removeprefix("qsink_")


def flatten(record: dict) -> dict:
    """Flatten a record into one row: metrics and timing by their own names, task accuracies as
    ``acc.TASK`` / ``delta_acc.TASK``, the model's profile summary, config with dotted names."""
    model = record["config"]["model"]
    row = {
        "model": model["name"],
        "scheme": record["identity"]["scheme"],
        "handling": record["identity"].get("handling", "none"),
        "data": record["config"]["data"]["data_name"],
        "ctx": record["identity"]["ctx"],
        "status": record["status"],
        "error": record.get("error"),
        "key": record["key"],
        "created": record["created"],
    }
    row.update(model.get("variant") or {})  # qsink models' switches (norm, gate, ...), in the record's order
    metrics = dict(record.get("metrics", {}))
    metrics.pop("agreement", None)  # the full agreement summary stays in the record; its headline numbers are columns
    for name, t in (metrics.pop("tasks", None) or {}).items():
        short = task_short(name)
        row[f"acc.{short}"] = t.get("acc")
        row[f"delta_acc.{short}"] = t.get("delta_acc")
        row[f"n.{short}"] = t.get("n")
    row.update(metrics)
    row.update(record.get("timing", {}))
    row.update({k: v for k, v in (record.get("profile") or {}).items() if k != "key"})
    config = dict(record["config"])
    if isinstance(config.get("quant"), dict):
        config["quant"] = _prune(config["quant"])
    nested = pd.json_normalize({"config": config, "env": record["env"]}, sep=".").iloc[0].to_dict()
    row.update(nested)
    return row


def _prune(d: dict) -> dict:
    """``d`` without its per-linear parts (:data:`NOT_FLATTENED`), at any depth."""
    return {k: _prune(v) if isinstance(v, dict) else v for k, v in d.items() if k not in NOT_FLATTENED}


def leaderboard(records: list[dict], sort: str = "ppl") -> pd.DataFrame:
    df = pd.DataFrame([flatten(r) for r in records])
    if df.empty:
        return df
    accs = sorted(c for c in df.columns if c.startswith(("acc.", "delta_acc.")))
    variant = list(dict.fromkeys(k for r in records for k in (r["config"]["model"].get("variant") or {})))
    front = FRONT[:1] + variant + FRONT[1:FRONT.index("bpb") + 1] + accs + FRONT[FRONT.index("bpb") + 1:]
    cols = [c for c in front if c in df.columns] + [c for c in df.columns if c not in front]
    df = df[cols]
    if sort in df.columns:
        df = df.sort_values([sort, "model"], kind="stable", na_position="last").reset_index(drop=True)
    return df


def kind_table(records: list[dict]) -> pd.DataFrame:
    """One row per quantized cell with agreement statistics: n and mean KLD per kind of position."""
    rows = []
    for r in records:
        a = r.get("metrics", {}).get("agreement") if r.get("status") == "ok" else None
        if not isinstance(a, dict):
            continue
        row = {"model": r["config"]["model"]["name"], "scheme": r["identity"]["scheme"],
               "handling": r["identity"].get("handling", "none")}
        for kind, v in a["by_kind"].items():
            row[f"KLD {kind}"] = v["kld_mean"]
            row[f"n {kind}"] = v["n"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["model", "scheme", "handling"]) if rows else pd.DataFrame()


def group_summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: cell count and the mean / worst of Δppl %, mean Δacc per task, mean SQNR (ok cells)."""
    ok = df[df["status"] == "ok"]
    numeric = [c for c in ("delta_ppl_pct", "sqnr_db_mean") + tuple(c for c in df.columns if c.startswith("delta_acc."))
               if c in ok.columns]
    g = ok.groupby(by, dropna=False)
    out = g.size().rename("cells").to_frame()
    for c in numeric:
        out[f"mean {c}"] = g[c].mean()
    if "delta_ppl_pct" in ok.columns:
        out["max delta_ppl_pct"] = g["delta_ppl_pct"].max()
    return out.reset_index()


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson's r between the vector ``rx`` and every row of ``ry``."""
    a = rx - rx.mean()
    b = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum() * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b @ a) / den


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks (ties share their mean rank)."""
    if len(x) < 2:
        return float("nan")
    return float(_pearson_rows(average_ranks(x), average_ranks(y)[None])[0])


def permutation_p(x, y, n_random: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of Spearman's rho under exchangeability: exact over all orderings for n <= 8,
    else from ``n_random`` seeded random permutations."""
    rx, ry = average_ranks(x), average_ranks(y)
    rho = float(_pearson_rows(rx, ry[None])[0])
    if math.isnan(rho):
        return float("nan")
    if len(ry) <= 8:
        perms = np.array(list(itertools.permutations(ry)))
    else:
        perms = np.random.default_rng(seed).permuted(np.tile(ry, (n_random, 1)), axis=1)
    return float(np.mean(np.abs(_pearson_rows(rx, perms)) >= abs(rho) - 1e-12))


def correlations(df: pd.DataFrame, target: str = "delta_ppl_pct") -> pd.DataFrame:
    """Per evaluation text and quantized (scheme, handling): Spearman's rho between each model's
    profile statistics (:data:`STATS`) and ``target`` across models, with n, a permutation p-value and a note
    when n is small. Models evaluated on different texts are never ranked together."""
    rows = []
    ok = df[(df["status"] == "ok") & (df["scheme"] != "fp")] if "status" in df.columns else df.iloc[0:0]
    need = {"spike_magnitude", target}
    if ok.empty or not need <= set(ok.columns):
        return pd.DataFrame(columns=["data", "scheme", "handling", "n", *(f"{k}_{s}" for s in STATS for k in ("rho", "p")),
                                     "note"])
    ok = ok.assign(data=ok["data"].fillna("-") if "data" in ok.columns else "-")
    for (data, scheme, handling), g in ok.groupby(["data", "scheme", "handling"], sort=True):
        g = g.dropna(subset=[target, "spike_magnitude"]).drop_duplicates("model")
        n = len(g)
        row = {"data": data, "scheme": scheme, "handling": handling, "n": n}
        for name, col in STATS.items():
            if col in g.columns and n >= 3:
                row[f"rho_{name}"] = spearman(g[col], g[target])
                row[f"p_{name}"] = permutation_p(g[col], g[target])
            else:
                row[f"rho_{name}"], row[f"p_{name}"] = float("nan"), float("nan")
        row["note"] = ("" if n >= MIN_MODELS_FOR_RHO else
                       f"n={n} < {MIN_MODELS_FOR_RHO} models: too few for rho to mean anything")
        rows.append(row)
    return pd.DataFrame(rows)
