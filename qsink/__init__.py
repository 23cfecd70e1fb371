"""qsink: how badly does low-bit quantization hurt a language model, and why.

Stages (each reads the previous one's output): ``models`` load a checkpoint, ``data`` reads
real text, ``measure`` profiles massive activations and attention sinks, ``quant`` applies a
quantization scheme, ``evaluate`` scores the result, and ``results`` stores one JSON record per
evaluation cell and builds leaderboards from them.
"""

__version__ = "0.1.0"

from qsink.models import family as _family  # noqa: E402,F401  (registers model_type "qsink" with transformers)
