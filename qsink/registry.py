"""Name -> object registries whose unknown-name errors list what exists ("did you mean")."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from qsink.errors import QsinkError

T = TypeVar("T")


class Registry(Generic[T]):
    """A case-sensitive mapping from names to registered objects.

    Example:
        >>> schemes = Registry("scheme")
        >>> @schemes.register("fp")
        ... class FP: ...
        >>> schemes.get("fp") is FP
        True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise QsinkError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self):
        return self._items.items()
