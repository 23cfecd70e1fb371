"""Readers that turn the raw files of our corpus packages into plain text.

Two formats, both read with the standard library only:

* R lazy-load databases (``*.rdb``): consecutive records, each a 4-byte big-endian length and a
  zlib stream holding one object in R's XDR serialization. We decode character vectors only.
* SWORD compressed modules (``zText`` / ``zCom``): an index of little-endian ``uint32`` triples
  ``(offset, size, uncompressed size)`` into a file of zlib blocks of OSIS XML.
"""

from __future__ import annotations

import html
import re
import struct
import zlib

STRSXP = 16
CHARSXP = 9


def read_rdb_records(blob: bytes) -> list[bytes]:
    """Split an R lazy-load database into its decompressed serialized records."""
    records, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ValueError("truncated record header")
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        d = zlib.decompressobj()
        raw = d.decompress(blob[pos + 4 :])
        if not d.eof or len(raw) != length:
            raise ValueError(f"record at byte {pos} is truncated or corrupt")
        records.append(raw)
        pos = len(blob) - len(d.unused_data)
    return records


def unserialize_character_vector(raw: bytes) -> list[str | None]:
    """Decode an R character vector from XDR serialization (format versions 2 and 3)."""
    if raw[:2] != b"X\n":
        raise ValueError("not an XDR-serialized R object")
    pos = 2
    (version,) = struct.unpack(">i", raw[pos : pos + 4])
    pos += 12  # format version, writer's R version, minimal reader version
    if version == 3:
        (n,) = struct.unpack(">i", raw[pos : pos + 4])
        pos += 4 + n  # native encoding name
    flags, length = struct.unpack(">ii", raw[pos : pos + 8])
    pos += 8
    if flags & 0xFF != STRSXP:
        raise ValueError(f"expected a character vector, found SEXP type {flags & 0xFF}")
    out: list[str | None] = []
    for _ in range(length):
        cflags, n = struct.unpack(">ii", raw[pos : pos + 8])
        pos += 8
        if cflags & 0xFF != CHARSXP:
            raise ValueError(f"expected CHARSXP, found type {cflags & 0xFF}")
        if n == -1:
            out.append(None)  # NA_character_
            continue
        out.append(raw[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    return out


def read_rdb_character_vectors(blob: bytes) -> list[list[str | None]]:
    return [unserialize_character_vector(r) for r in read_rdb_records(blob)]


_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note>)", re.S)
_BLOCK = re.compile(r"</?(?:div|p|l|lg|lb|title|chapter|item|list|head|milestone|verse)\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")


def osis_to_text(xml: str) -> str:
    """Strip OSIS markup: notes become a space, block elements a line break, other tags vanish."""
    xml = _NOTE.sub(" ", xml)
    xml = _BLOCK.sub("\n", xml)
    text = html.unescape(_TAG.sub("", xml))
    lines = (re.sub(r"[ \t\u00a0]+", " ", ln).strip() for ln in text.split("\n"))
    return "\n".join(ln for ln in lines if ln)


def read_sword_blocks(index: bytes, data: bytes) -> list[str]:
    """Decompress every block of a SWORD zText/zCom module, in index order."""
    if len(index) % 12:
        raise ValueError("block index size is not a multiple of 12 bytes")
    blocks = []
    for i in range(0, len(index), 12):
        offset, size, usize = struct.unpack("<III", index[i : i + 12])
        if size == 0:
            continue
        if offset + size > len(data):
            raise ValueError(f"block {i // 12} points past the end of the data file")
        raw = zlib.decompress(data[offset : offset + size])
        if len(raw) != usize:
            raise ValueError(f"block {i // 12} decompressed to {len(raw)} bytes, index says {usize}")
        blocks.append(raw.decode("utf-8", errors="replace"))
    return blocks


def sword_text(index: bytes, data: bytes) -> str:
    return "\n".join(t for t in (osis_to_text(b) for b in read_sword_blocks(index, data)) if t)
