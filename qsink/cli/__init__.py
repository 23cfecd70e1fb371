"""The ``qsink`` command line: argument declarations and rendering; the work is in the stages.

``common`` (apps, consoles, progress), then one module per group of commands (``stages``,
``tables``, ``info``, ``bench``), ``render`` for profile output, and ``main``, the entry point.
"""

from qsink.cli.common import app, bench_app
from qsink.cli.main import main

__all__ = ["app", "bench_app", "main"]
