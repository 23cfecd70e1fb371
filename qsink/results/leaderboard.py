"""Leaderboard: one row per record, columns derived from the record's fields."""

from __future__ import annotations

import pandas as pd

FRONT = ["model", "scheme", "handling", "data", "ctx", "status", "ppl", "delta_ppl", "delta_ppl_pct", "bpb",
         "sqnr_db_mean", "sqnr_db_min", "kept_token_fraction", "nll", "n_scored", "tokens_per_s", "wall_s"]
NOT_FLATTENED = ("sqnr_db",)  # per-linear dicts stay in the record, not in columns


def flatten(record: dict) -> dict:
    """Flatten a record into one row: metrics and timing by their own names, config with dotted names."""
    row = {
        "model": record["config"]["model"]["name"],
        "scheme": record["identity"]["scheme"],
        "handling": record["identity"].get("handling", "none"),
        "data": record["config"]["data"]["data_name"],
        "ctx": record["identity"]["ctx"],
        "status": record["status"],
        "error": record.get("error"),
        "key": record["key"],
        "created": record["created"],
    }
    row.update(record.get("metrics", {}))
    row.update(record.get("timing", {}))
    config = dict(record["config"])
    if isinstance(config.get("quant"), dict):
        config["quant"] = {k: v for k, v in config["quant"].items() if k not in NOT_FLATTENED}
    nested = pd.json_normalize({"config": config, "env": record["env"]}, sep=".").iloc[0].to_dict()
    row.update(nested)
    return row


def leaderboard(records: list[dict], sort: str = "ppl") -> pd.DataFrame:
    df = pd.DataFrame([flatten(r) for r in records])
    if df.empty:
        return df
    cols = [c for c in FRONT if c in df.columns] + [c for c in df.columns if c not in FRONT]
    df = df[cols]
    if sort in df.columns:
        df = df.sort_values([sort, "model"], kind="stable", na_position="last").reset_index(drop=True)
    return df
