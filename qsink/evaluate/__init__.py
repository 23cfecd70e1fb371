"""Scoring quantized models.

``settings`` (defaults and checks of every evaluation option) and ``plan`` (the matrix of cells)
first; ``quantized`` is the one path from settings to a quantized model; ``perplexity`` and
``lmeval`` score it; ``runner`` turns cells into records; ``ablate`` takes a quantized model apart
linear by linear; ``lmeval_cli`` is lm-eval's command line with a ``qsink`` model type.
"""
