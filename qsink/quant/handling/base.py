"""The outlier-handling interface and its registry."""

from __future__ import annotations

import torch.nn as nn

from qsink.errors import QsinkError
from qsink.registry import Registry


class Handler:
    """One outlier-handling method. Subclasses override what they need:

    * :meth:`check` rejects a scheme it cannot serve, with a reason, before any compute;
    * :meth:`check_model` rejects a model family it cannot serve (the adapter says why), before any
      weight changes;
    * :meth:`prepare` edits the fp model in a function-preserving way (rotations, scalings) or
      finds what it needs from calibration data, before linears are replaced;
    * :meth:`linear_options` adds per-linear options to ``QLinear``;
    * :meth:`install` adds forward hooks to the model (returns the handles to keep);
    * :meth:`after_calibration` runs once the calibration pass has filled each QLinear's statistics;
    * :meth:`report` says what it did, for the record.

    A handler whose :meth:`prepare` depends on its own options alone (neither the scheme nor calibration data,
    as a seeded rotation) names that rewrite with :meth:`rewrite_key`: the cells of a matrix whose handlers
    give the same key start from one rewritten fp model (:func:`qsink.quant.apply.rewrite_base_`), and each
    handler :meth:`adopt`\ s the state the rewrite left instead of running :meth:`prepare` again.
    """

    name = "none"
    description = "no outlier handling"
    needs_calibration = False
    inputs_unchanged = True  # prepare() leaves every linear's input as in the fp model (shared calibration applies)
    needs_rows = False  # after_calibration() reads each QLinear's sample of input rows
    tokenizer = None  # set by quantize_ before prepare()
    shared = None  # the fp model's shared calibration statistics, if the caller has them (set by quantize_)
    artifacts = None  # {"dir": where a handler may keep what it learned, "model_sha256": ...} (set by quantize_)

    def __init__(self, **options):
        if options:
            raise QsinkError(f"handling {self.name!r} takes no options (got {', '.join(options)})")

    def check(self, scheme) -> None:
        pass

    def check_model(self, adapter) -> None:
        """Reject a model family this method cannot serve, with a reason, before any weight changes."""

    def prepare(self, model: nn.Module, adapter, calib, scheme) -> None:
        pass

    def linear_options(self, layer: int, name: str) -> dict:
        return {}

    def install(self, model: nn.Module, ctx) -> list:
        return []

    def after_calibration(self, qlinears: dict) -> None:
        pass

    @property
    def reads_calibration(self) -> bool:
        """Whether :meth:`after_calibration` reads the calibration pass's statistics (a handler that does not
        override it needs the pass only for a static scheme's scales)."""
        return type(self).after_calibration is not Handler.after_calibration

    def report(self) -> dict:
        return {}

    def rewrite_key(self) -> tuple | None:
        """What this handler's :meth:`prepare` does to the fp model, when that depends on its options alone; None
        when its rewrite depends on the scheme or the calibration data (or it rewrites nothing)."""
        return None

    def adopt(self, prepared: "Handler") -> None:
        """Take over what ``prepared`` (a handler with the same :meth:`rewrite_key`) learned in its :meth:`prepare`
        of the model now being quantized, in place of a prepare() of its own."""
        raise QsinkError(f"{self.name} has no rewrite to share")

    def shared_needs(self, scheme) -> set[str]:
        """What this handler's cells take from :class:`~qsink.quant.calibration.CalibrationStats` (declared before
        the shared pass so that one pass collects it all), from the model the cell starts from: the fp model, or
        the rewritten one its :meth:`rewrite_key` names."""
        if not (self.inputs_unchanged or self.rewrite_key() is not None) or not (self.needs_calibration or scheme.act_static):
            return set()
        return {"absmax"} | ({"rows"} if self.needs_rows else set())


HANDLERS: Registry[type[Handler]] = Registry("outlier-handling method")


def register(cls: type[Handler]) -> type[Handler]:
    HANDLERS.add(cls.name, cls)
    return cls


def needs_acts(handler: Handler, scheme) -> None:
    if scheme.act is None:
        raise QsinkError(f"{handler.name} protects activation quantization, and {scheme.name} quantizes no activations; "
                         "drop the combination or pick a scheme with activation quantization")


register(Handler)
