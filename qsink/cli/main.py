"""``qsink``'s entry point: runs a command, turns a :class:`~qsink.errors.QsinkError` into one
``error:`` line and exit code 2, and SIGINT / SIGTERM into one line and exit code 130 / 143."""

from __future__ import annotations

import sys

import typer

from qsink.cli import bench, info, stages, tables  # noqa: F401  (each module registers its commands)
from qsink.cli.common import app
from qsink.errors import QsinkError


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that every ``finally`` (temporary files) runs.

    A BaseException, not KeyboardInterrupt: typer turns a KeyboardInterrupt into a silent return of 130."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# what an interrupted command leaves behind, and how to go on
KEPT = {"train": "the last checkpoint is kept; rerun with --resume to continue",
        "sweep": "finished jobs are kept; rerun the same command to run the rest",
        "data": "nothing half-written is kept; rerun the same command"}
KEPT_DEFAULT = "finished records are kept; rerun the same command to finish the rest"


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), "qsink")
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=args, standalone_mode=False)
    except QsinkError as e:
        sys.stderr.write("error: " + " ".join(str(e).split()) + "\n")
        sys.exit(e.exit_code)
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        sys.stderr.write(f"interrupted: qsink {command} stopped by {name}; {KEPT.get(command, KEPT_DEFAULT)}\n")
        sys.exit(128 + e.signum)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    sys.exit(code if isinstance(code, int) else 0)
