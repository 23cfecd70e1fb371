import io
import tarfile

import pytest

from qsink.data import debian
from qsink.errors import QsinkError


def ar_archive(members):
    out = debian.AR_MAGIC
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def fake_deb(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", buf.getvalue())])


def test_ar_members_handles_odd_sizes():
    blob = ar_archive([("a", b"abc"), ("b", b"de")])
    assert debian.ar_members(blob) == {"a": b"abc", "b": b"de"}


def test_read_deb_files(tmp_path):
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(fake_deb({"usr/share/x.txt": b"hello", "usr/share/y.txt": b"other"}))
    assert debian.read_deb_files(deb, ["usr/share/x.txt"]) == {"usr/share/x.txt": b"hello"}
    with pytest.raises(QsinkError, match="lacks"):
        debian.read_deb_files(deb, ["usr/share/missing.txt"])


def test_corrupt_deb_is_a_clear_error(tmp_path):
    deb = tmp_path / "bad.deb"
    deb.write_bytes(b"not an archive")
    with pytest.raises(QsinkError, match="not a valid Debian package"):
        debian.read_deb_files(deb, ["x"])
    good = fake_deb({"usr/a": b"a" * 5000})
    deb.write_bytes(good[: len(good) - 300])
    with pytest.raises(QsinkError):
        debian.read_deb_files(deb, ["usr/a"])
