"""Markdown tables for reports and studies: one cell formatter and one table writer."""

from __future__ import annotations

import math

import pandas as pd


def fmt(v, spec: str = "{:.4g}") -> str:
    """A table cell: ``-`` for a missing value (None or NaN), yes/no for a flag, ``spec`` for a float."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def table(rows: list[dict], columns: list | None = None) -> str:
    """A Markdown table of ``rows`` (cells written as given); the columns are ``columns`` or the first
    row's keys, and a table with neither says so."""
    cols = list(columns) if columns is not None else list(rows[0]) if rows else None
    if cols is None:
        return "_(no data)_"
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def frame_table(df: pd.DataFrame, formats: dict | None = None, default: str = "{:.4g}") -> str:
    """A DataFrame as a Markdown table, each column's floats formatted with ``formats[column]``."""
    formats = formats or {}
    return table([{c: fmt(r[c], formats.get(c, default)) for c in df.columns} for _, r in df.iterrows()], list(df.columns))
