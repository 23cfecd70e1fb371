"""A piece of text with its identity (name and sha256), and reading a user's UTF-8 file as one.

Every source of text (Debian corpora, the synthetic language, user files, hub datasets) returns a
:class:`Text`; windowing, calibration and records read only this type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsink.files import sha256_text
from qsink.errors import QsinkError


@dataclass(frozen=True)
class Text:
    """A piece of evaluation or training text with its identity."""

    name: str  # e.g. "austen:test" or "file:notes.txt"
    text: str
    sha256: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def load_text_file(path: str | Path) -> Text:
    """Read a user's UTF-8 text file."""
    p = Path(path)
    if not p.is_file():
        raise QsinkError(f"text file {p} does not exist; pass a path to a UTF-8 text file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise QsinkError(f"text file {p} is not UTF-8 (bad byte at offset {e.start}); convert it, e.g. with iconv -t utf-8") from None
    if not text.strip():
        raise QsinkError(f"text file {p} is empty; pass a file with text in it")
    return Text(f"file:{p.name}", text, sha256_text(text))
