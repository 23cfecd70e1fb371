"""Leaderboard: one row per record, columns derived from the record's fields."""

from __future__ import annotations

import pandas as pd

FRONT = ["model", "scheme", "data", "ctx", "status", "ppl", "bpb", "nll", "n_scored", "tokens_per_s", "wall_s"]


def flatten(record: dict) -> dict:
    """Flatten a record into one row: metrics and timing by their own names, config with dotted names."""
    row = {
        "model": record["config"]["model"]["name"],
        "scheme": record["identity"]["scheme"],
        "data": record["config"]["data"]["data_name"],
        "ctx": record["identity"]["ctx"],
        "status": record["status"],
        "error": record.get("error"),
        "key": record["key"],
        "created": record["created"],
    }
    row.update(record.get("metrics", {}))
    row.update(record.get("timing", {}))
    nested = pd.json_normalize({"config": record["config"], "env": record["env"]}, sep=".").iloc[0].to_dict()
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
