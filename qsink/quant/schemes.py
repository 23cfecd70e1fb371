"""Quantization schemes: one validated dataclass per named scheme.

Only ``fp`` (no quantization) exists so far; the quantization engine adds the rest. The CLI's
``--scheme`` option already resolves names through :data:`SCHEMES`, so an unknown name is
rejected with the list of known ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qsink.registry import Registry


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


SCHEMES: Registry[Scheme] = Registry("scheme")
SCHEMES.add("fp", Scheme("fp", "no quantization: the model in its load dtype (the reference every delta is taken against)"))


def get_scheme(name: str) -> Scheme:
    return SCHEMES.get(name)
