"""Real text for evaluation and training: Debian-packaged corpora, the synthetic language, user files, windowing.

Inside the package, ``text`` (the :class:`Text` type) is at the bottom, the sources (``corpora``,
``synthetic``) read it, ``resolve`` dispatches over them, and ``windows`` cuts any text into windows.
"""

from qsink.data.corpora import CORPORA, fetch, load_corpus
from qsink.data.resolve import resolve_data
from qsink.data.text import Text, load_text_file

__all__ = ["CORPORA", "Text", "fetch", "load_corpus", "load_text_file", "resolve_data"]
