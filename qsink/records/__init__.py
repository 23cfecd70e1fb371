"""Records, the seam between stages: the JSON schema of a result and the directory that stores them.

Below every stage: ``measure`` stores profiles here, ``evaluate`` stores cells, and ``results``
reads them back for leaderboards and studies.
"""

from qsink.records.record import PROFILE_FIELDS, SCHEMA, cell_key, env_info, make_record
from qsink.records.store import RecordStore

__all__ = ["PROFILE_FIELDS", "SCHEMA", "RecordStore", "cell_key", "env_info", "make_record"]
