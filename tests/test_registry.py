import pytest

from qsink.errors import QsinkError
from qsink.registry import Registry


def test_lookup_and_did_you_mean():
    reg = Registry("widget")
    reg.add("hadamard", 1)
    reg.add("smoothquant", 2)
    assert reg.get("hadamard") == 1
    with pytest.raises(QsinkError) as e:
        reg.get("hadamrd")
    msg = str(e.value)
    assert "Did you mean 'hadamard'" in msg and "Known: hadamard, smoothquant" in msg


def test_unknown_without_close_match_lists_names():
    reg = Registry("widget")
    reg.add("fp", 0)
    with pytest.raises(QsinkError, match=r"unknown widget 'zzz'\. Known: fp\."):
        reg.get("zzz")


def test_duplicate_registration_is_a_bug():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError):
        reg.add("a", 2)
