"""What every command shares: the typer apps, the consoles, progress bars, and the defaults the
options show (taken from the settings objects, so they are written in one place)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qsink.evaluate.settings import EvalSettings
from qsink.measure.options import MeasureOptions, ProfileSettings

EVAL, MEASURE, PROFILE = EvalSettings(), MeasureOptions(), ProfileSettings()  # the defaults the options below show
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qsink: how much does low-bit quantization hurt a language model, and why.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: performance ratios measured side by side in one run.")
data_app = typer.Typer(no_args_is_help=True, help="Corpora: fetch and list the built-in texts.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

# tables are wide: when the output is a file or a pipe, do not squeeze them into 80 columns
stdout = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def log(msg: str) -> None:
    err.print(msg, highlight=False, markup=False)


DEVICE_HELP = "auto, cpu, cuda[:N] or map (layers spread over the GPUs by accelerate; auto maps a model too big for one GPU)."


def windows_progress(progress: Progress):
    """A factory the runners call per task: (description, total windows) -> advance callback."""

    def factory(desc: str, total: int):
        task = progress.add_task(desc, total=total)
        return lambda n: progress.advance(task, n)

    return factory


@contextmanager
def progress_bars(unit: str = "windows", *columns):
    """Progress bars on stderr; if the work inside fails, the bars are hidden so that the error line
    (or the interruption line) stands alone."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), *columns,
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    with progress:
        try:
            yield progress
        except BaseException:
            for t in progress.task_ids:
                progress.update(t, visible=False)
            raise
