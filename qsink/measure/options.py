"""The settings of ``qsink measure``: what the statistics count (:class:`ProfileSettings`, written
into every profile) and what the command does besides (:class:`MeasureOptions`), with their
defaults and checks in one place. Light on purpose: the command line reads the defaults from here
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from qsink.errors import QsinkError
from qsink.validate import above, at_least, check_device, check_dtype, check_types


@dataclass
class ProfileSettings:
    """What the profile counts; written into every profile and part of its identity."""

    top_k: int = 8  # largest |h| kept per layer
    massive_abs: float = 100.0  # |h| above this ...
    massive_ratio: float = 1000.0  # ... and above this times the layer median
    sink_eps: float = 0.3  # a head is a sink if its mean attention on key 0 exceeds this (Gu et al. 2024)
    attn_windows: int | None = None  # windows that run eager attention (None: all; 0: no sink statistics)

    def __post_init__(self):
        check_types(self, flags=True)
        at_least(flags=True, top_k=(self.top_k, 1), attn_windows=(self.attn_windows, 0))
        above(flags=True, massive_abs=(self.massive_abs, 0), massive_ratio=(self.massive_ratio, 0))
        if not 0 < self.sink_eps < 1:
            raise QsinkError(f"--sink-eps is a share of attention and must lie strictly between 0 and 1, not {self.sink_eps}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MeasureOptions:
    """What ``qsink measure`` does besides the statistics' own settings (:class:`ProfileSettings`)."""

    ctx: int = 512  # tokens per window
    samples: int = 16  # windows profiled
    batch_size: int = 1
    dtype: str = "fp32"
    device: str = "auto"
    trust_remote_code: bool = False  # only ever from the command line
    force: bool = False  # recompute a stored profile
    attribution: bool = False  # the sub-layers that inject and remove each spike channel
    vocab_scan: bool = False  # every vocabulary item at position 0
    sample: int | None = None  # vocab scan: a seeded sample of this many items (None: all)
    scan_layers: tuple[int, ...] | None = None  # vocab scan: residual layers checked (None: the position-0 plateau)
    gradients: bool = False  # gradient-sink ratio per layer
    grad_windows: int = 4  # gradients: windows back-propagated

    def __post_init__(self):
        check_types(self, flags=True)
        at_least(flags=True, ctx=(self.ctx, 2), samples=(self.samples, 1), batch_size=(self.batch_size, 1),
                 sample=(self.sample, 1), grad_windows=(self.grad_windows, 1))
        check_dtype(self.dtype)
        check_device(self.device)
        if self.scan_layers is not None:
            object.__setattr__(self, "scan_layers", tuple(sorted(set(self.scan_layers))))


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """``--scan-layers 12,13`` -> (12, 13)."""
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise QsinkError(f"--scan-layers takes comma-separated layer numbers, not {text!r}") from None
