"""The spike half of qsink: massive activations, attention sinks and outlier statistics.

``options`` (settings) and ``stats`` (pure formulas) at the bottom; ``attention`` reads attention
weights; ``collect`` is the one hooked pass that builds a ``document`` (the JSON profile);
``attribution``, ``vocab_scan`` and ``gradients`` are the seed papers' analyses; ``workflow`` is
``qsink measure`` as a function; ``plots`` draws a profile.
"""
