"""One exception type for every problem the user can fix.

The CLI turns a :class:`QsinkError` into a single line on stderr and exit code 2, with no
traceback. Messages name the problem and say what to do about it.
"""

from __future__ import annotations


class QsinkError(Exception):
    """A problem with the user's input or environment, with advice on how to fix it."""

    exit_code = 2


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (its type's name when it has none), for a one-line error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
