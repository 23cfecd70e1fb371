"""``qsink sweep``: training and evaluation jobs with dependencies, run locally or on Ray."""

from qsink.sweep.execute import EXECUTORS, execute, run_job, status
from qsink.sweep.plan import Job, Sweep, load_sweep, order

__all__ = ["EXECUTORS", "Job", "Sweep", "execute", "load_sweep", "order", "run_job", "status"]
