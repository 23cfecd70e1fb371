"""Text from anywhere, by the name a user types: ``--data NAME[:SPLIT]`` or ``--text FILE``.

The one dispatcher over the sources: the Debian corpora (:mod:`qsink.data.corpora`), the synthetic
language (:mod:`qsink.data.synthetic`), a user's file and, with a network, a Hugging Face dataset.
"""

from __future__ import annotations

from typing import Callable

from qsink.files import sha256_text
from qsink.data.corpora import load_corpus
from qsink.data.synthetic import SYNTHETIC, load_synthetic
from qsink.data.text import Text, load_text_file
from qsink.errors import QsinkError


def load_hf_dataset(spec: str) -> Text:
    """``hf:NAME[:CONFIG]``: the test split's ``text`` column through the ``datasets`` library (needs a network)."""
    parts = spec.split(":")
    name, config = parts[1], (parts[2] if len(parts) > 2 else None)
    try:
        import datasets
    except ImportError:
        raise QsinkError("hf: data needs the 'datasets' package: pip install datasets (and a network)") from None
    try:
        ds = datasets.load_dataset(name, config, split="test")
    except Exception as e:  # the hub can fail in many ways; all of them mean the same to the user
        raise QsinkError(f"could not load {spec} from the Hugging Face hub ({type(e).__name__}); check the name and the network, or use --text FILE") from None
    if "text" not in ds.column_names:
        raise QsinkError(f"{spec} has no 'text' column (columns: {ds.column_names})")
    text = "\n\n".join(t for t in ds["text"] if t)
    return Text(spec, text, sha256_text(text))


def resolve_data(data: str | None, text_file: str | None, log: Callable[[str], None] = print) -> Text:
    """Text from ``--data NAME[:SPLIT]`` (or ``file:PATH``, ``hf:NAME[:CONFIG]``, the synthetic
    ``bb:SPLIT``) or ``--text FILE``."""
    if data and text_file:
        raise QsinkError("give either --data or --text, not both")
    if text_file:
        return load_text_file(text_file)
    data = data or "austen:test"
    if data.startswith("file:"):
        return load_text_file(data[5:])
    if data.startswith("hf:"):
        return load_hf_dataset(data)
    name, _, split = data.partition(":")
    if name in SYNTHETIC:
        return load_synthetic(name, split or None)
    return load_corpus(name, split or None, log=log)
