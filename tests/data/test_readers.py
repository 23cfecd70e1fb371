"""Known-answer tests of the corpus readers on byte strings built here by independent writers."""

import struct
import zlib

import pytest

from qsink.data import readers


def r_serialize_strings(lines, version=3):
    """Write an R character vector in XDR serialization, as R's serialize() does."""
    out = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(lines))  # STRSXP
    for s in lines:
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            b = s.encode("utf-8")
            out += struct.pack(">ii", 0x00040009, len(b)) + b
    return out


def rdb(records):
    return b"".join(struct.pack(">I", len(r)) + zlib.compress(r) for r in records)


def test_rdb_round_trip_several_records():
    novels = [["EMMA", "", "Emma Woodhouse, handsome, clever, and rich"], ["Persuasion", None, "Sir Walter Elliot — é"]]
    blob = rdb([r_serialize_strings(novels[0]), r_serialize_strings(novels[1], version=2)])
    assert readers.read_rdb_character_vectors(blob) == novels


def test_rdb_truncated_record_is_an_error():
    blob = rdb([r_serialize_strings(["a" * 1000])])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        readers.read_rdb_records(blob[:-20])


def test_rdb_rejects_non_character_vectors():
    raw = b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 14, 1) + struct.pack(">d", 1.0)  # REALSXP
    with pytest.raises(ValueError, match="character vector"):
        readers.unserialize_character_vector(raw)


def test_osis_notes_become_space_and_tags_vanish():
    xml = ('<div type="x-p"/><w lemma="strong:H1">God</w><note placement="foot">1:1 a note</note>'
           '<w lemma="x">created</w> the <hi type="italic">heavens</hi>. &amp; more<lb/>next line')
    assert readers.osis_to_text(xml) == "God created the heavens. & more\nnext line"


def test_sword_blocks_follow_the_index():
    blocks = ["<chapter/>In the beginning", "<div/>was the word"]
    data, index = b"", b""
    for b in blocks:
        raw = b.encode()
        comp = zlib.compress(raw)
        index += struct.pack("<III", len(data), len(comp), len(raw))
        data += comp
    index += struct.pack("<III", 0, 0, 0)  # empty block entries are skipped
    assert readers.sword_text(index, data) == "In the beginning\nwas the word"
    with pytest.raises(ValueError, match="past the end"):
        readers.read_sword_blocks(index, data[:5])
