"""qsink: how badly does low-bit quantization hurt a language model, and why.

Stages (each reads the previous one's output): ``models`` load a checkpoint, ``data`` reads
real text, ``measure`` profiles massive activations and attention sinks, ``quant`` applies a
quantization scheme, ``evaluate`` scores the result into ``records``, and ``results`` builds
leaderboards, studies and reports from them. The README's "Layers" section draws the house;
``tests/test_layers.py`` keeps it true.
"""

__version__ = "0.1.0"
