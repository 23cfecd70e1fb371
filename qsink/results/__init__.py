"""Result records, their atomic store, and the leaderboard built from them."""

from qsink.results.leaderboard import flatten, leaderboard
from qsink.results.record import SCHEMA, cell_key, make_record
from qsink.results.store import RecordStore

__all__ = ["SCHEMA", "RecordStore", "cell_key", "flatten", "leaderboard", "make_record"]
