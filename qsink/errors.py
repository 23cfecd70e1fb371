"""One exception type for every problem the user can fix.

The CLI turns a :class:`QsinkError` into a single line on stderr and exit code 2, with no
traceback. Messages name the problem and say what to do about it.
"""

from __future__ import annotations


class QsinkError(Exception):
    """A problem with the user's input or environment, with advice on how to fix it."""

    exit_code = 2
