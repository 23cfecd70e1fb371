"""The listing commands: built-in models, schemes and handling methods, corpora."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from qsink.cli.common import app, data_app, log, stdout


@app.command("models")
def models_cmd() -> None:
    """List the built-in models, where they resolve on disk, and their size, then the hub models already cached."""
    from qsink.models import BUILTINS

    table = Table(title="built-in models")
    for col in ("name", "description", "location", "size"):
        table.add_column(col)
    for name, b in BUILTINS.items():
        path = b.locate()
        where = str(path) if path else f"not installed: {b.install}"
        size = f"{path.stat().st_size / 2**20:.1f} MiB" if path else "-"
        table.add_row(name, b.description, where, size)
    stdout.print(table)
    for name, b in BUILTINS.items():
        if b.note:
            stdout.print(f"[bold]{name}[/bold]: {b.note}")
    from qsink.models.hub import cached_models, hub_cache

    rows = cached_models()
    if rows:
        table = Table(title=f"Hugging Face hub models in the local cache ({hub_cache()})")
        for col in ("model", "commit", "refs", "weights", "size"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["spec"], r["commit"][:12], ", ".join(r["refs"]) or "-", r["weights"], f"{r['size'] / 2**20:.1f} MiB")
        stdout.print(table)
    else:
        stdout.print(f"No Hugging Face hub models in the local cache ({hub_cache()}).")
    stdout.print("Any Hugging Face checkpoint directory (safetensors), .gguf file or hub id "
                 "(org/name, org/name@REVISION, org/name:FILE.gguf) works too.")


@app.command("schemes")
def schemes_cmd() -> None:
    """List the quantization schemes and the outlier-handling methods."""
    from qsink.quant import HANDLERS, SCHEMES

    table = Table(title="schemes")
    for col in ("name", "weights", "activations", "description"):
        table.add_column(col)
    for name, s in SCHEMES.items():
        act = "-" if s.act is None else f"{s.act}{' static' if s.act_static else ''}"
        table.add_row(name, str(s.weight) if s.weight else "-", act, s.description)
    stdout.print(table)
    table = Table(title="outlier handling (--handling)")
    table.add_column("name")
    table.add_column("description")
    for name, cls in HANDLERS.items():
        table.add_row(name, cls.description)
    stdout.print(table)


@data_app.command("fetch")
def data_fetch(
    names: Optional[List[str]] = typer.Argument(None, help="Corpora to fetch (default: all)."),
    force: bool = typer.Option(False, "--force", help="Download and extract again."),
) -> None:
    """Download the Debian packages and extract the corpora into the cache (sha256-verified)."""
    from qsink.data import CORPORA, fetch

    for name in names or CORPORA.names():
        CORPORA.get(name)
    for name in names or CORPORA.names():
        fetch(name, force=force, log=log)


@data_app.command("list")
def data_list() -> None:
    """List the corpora, their splits and whether they are cached."""
    from qsink.data import CORPORA
    from qsink.data.corpora import is_fetched, read_manifest

    table = Table(title="corpora")
    for col in ("name", "package", "description", "splits", "cached"):
        table.add_column(col)
    for name, c in CORPORA.items():
        cached = "no (fetched on first use)"
        if is_fetched(name):
            splits = read_manifest(name)["splits"]
            cached = ", ".join(f"{s} {v['chars'] / 1e6:.2f}M chars" for s, v in splits.items())
        table.add_row(name, c.package, c.description, ", ".join(c.splits), cached)
    stdout.print(table)
