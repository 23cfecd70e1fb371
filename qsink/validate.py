"""Checks shared by every settings object: types against annotations, ranges, devices, output paths.

Settings arrive from typed CLI options, but also from YAML recipes and sweeps, where ``ctx: abc``
or ``lr: fast`` would otherwise travel until some arithmetic fails with a traceback. A settings
dataclass calls :func:`check_types` first thing in its ``__post_init__`` and then its ranges with
:func:`at_least` / :func:`above`; every message names the key (and, for command-line settings,
the option) and says what to write instead.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

from qsink.errors import QsinkError

# the values of options shared by several commands (kept here, below every stage, so that settings
# objects can check them without importing torch)
DEVICE_PATTERN = re.compile(r"^(auto|map|cpu|mps|(cuda|xpu)(:\d+)?)$")  # what --device accepts
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}  # --dtype -> torch dtype name
INCLUDABLE = ("lm_head", "embed")  # --include: modules quantize_ leaves in high precision unless named
_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a mapping", tuple: "a list"}
_PLURALS = {int: "whole numbers", float: "numbers", str: "strings"}


def _union_args(kind) -> tuple | None:
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else None


def accepts(kind, value) -> bool:
    """Whether ``value`` fits the annotation ``kind`` (an int is a float, a bool is neither; list
    elements are checked against ``list[X]`` / ``tuple[X, ...]``)."""
    if kind is typing.Any:
        return True
    if (args := _union_args(kind)) is not None:
        return any(accepts(k, value) for k in args)
    if kind is type(None):
        return value is None
    origin, args = typing.get_origin(kind) or kind, typing.get_args(kind)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(accepts(args[0], v) for v in value))
    return isinstance(value, origin)


def _describe(kind) -> str:
    args = _union_args(kind)
    parts = [a for a in args if a is not type(None)] if args else [kind]
    names = []
    for a in parts:
        origin, inner = typing.get_origin(a) or a, typing.get_args(a)
        names.append(_NAMES.get(origin, getattr(origin, "__name__", str(origin)))
                     + (f" of {_PLURALS[inner[0]]}" if origin in (list, tuple) and inner and inner[0] in _PLURALS else ""))
    return " or ".join(names) + (" (or null)" if args and type(None) in args else "")


def _hint(kind, value) -> str:
    """YAML 1.1 reads ``1e-3`` as a string; say so instead of leaving the user puzzled."""
    if isinstance(value, str) and accepts(kind, 1.0) and not accepts(kind, value):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (YAML reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e-3)"
    return ""


def label(name: str, flags: bool = False) -> str:
    """``max_tokens`` or, for settings that come from the command line, ``max_tokens (--max-tokens)``."""
    return f"{name} (--{name.replace('_', '-')})" if flags else name


def check_value(name: str, value, kind, where: str = "", flags: bool = False) -> None:
    """Raise a :class:`QsinkError` unless ``value`` fits the annotation ``kind``."""
    if not accepts(kind, value):
        raise QsinkError(f"{where}{label(name, flags)} must be {_describe(kind)}, not {value!r}{_hint(kind, value)}")


def split_names(values) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]``."""
    values = [values] if isinstance(values, str) else list(values or [])
    return [n.strip() for v in values for n in str(v).split(",") if n.strip()]


def check_types(obj, where: str = "", flags: bool = False) -> None:
    """Raise a :class:`QsinkError` naming the first field of dataclass ``obj`` whose value has the wrong type.

    ``where`` prefixes the message; ``flags`` adds each field's command-line spelling (``--max-tokens``).

    Example:
        >>> @dataclasses.dataclass
        ... class S:
        ...     ctx: int = 512
        ...     def __post_init__(self):
        ...         check_types(self, "eval recipe: ")
        >>> S(ctx="abc")
        Traceback (most recent call last):
        qsink.errors.QsinkError: eval recipe: ctx must be a whole number, not 'abc'
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_value(f.name, getattr(obj, f.name), hints[f.name], where, flags)


def at_least(where: str = "", flags: bool = False, **values) -> None:
    """Each ``name=(value, minimum)`` must be ``>= minimum`` (``None`` values are skipped; NaN fails)."""
    for name, (value, minimum) in values.items():
        if value is not None and not value >= minimum:
            raise QsinkError(f"{where}{label(name, flags)} must be at least {minimum}, not {value}")


def above(where: str = "", flags: bool = False, **values) -> None:
    """Each ``name=(value, bound)`` must be ``> bound`` (``None`` values are skipped; NaN fails)."""
    for name, (value, bound) in values.items():
        if value is not None and not value > bound:
            raise QsinkError(f"{where}{label(name, flags)} must be more than {bound}, not {value}")


def check_device(device) -> None:
    """``--device``: auto, map, cpu, mps, cuda[:N] or xpu[:N] (whether it exists is checked when loading)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise QsinkError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or map")


def check_dtype(dtype) -> None:
    if dtype not in DTYPES:
        raise QsinkError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")


def check_file_target(path, flag: str) -> None:
    """An output file option (``--csv``, ``--out``) must not name a directory or sit under a file."""
    path = Path(path)
    if path.is_dir():
        raise QsinkError(f"{flag} {path} is a directory; pass a file name, e.g. {path / 'out'}{path.suffix or ''}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise QsinkError(f"{flag} {path}: {parent} is a file, not a directory; pass another path")
