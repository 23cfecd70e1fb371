"""Real text for evaluation and training: Debian-packaged corpora, user files, windowing."""

from qsink.data.corpora import CORPORA, Text, fetch, load_corpus, load_text_file, resolve_data

__all__ = ["CORPORA", "Text", "fetch", "load_corpus", "load_text_file", "resolve_data"]
