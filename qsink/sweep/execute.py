"""Running a sweep's jobs: in this process, in a local process pool, or as Ray tasks.

Every executor shares one scheduler: a job is submitted once all its dependencies have finished
well, and is marked ``blocked`` (never run) when one of them failed. Workers write their outputs
atomically (checkpoint directories are swapped in whole, records written to a temporary file and
renamed), so a driver or worker killed at any moment leaves only whole outputs, and the next run
of the same sweep skips them.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from qsink.data import resolve_data
from qsink.errors import QsinkError
from qsink.evaluate.plan import Cell
from qsink.evaluate.runner import finished, identity, run_cells
from qsink.evaluate.settings import EvalSettings
from qsink.models import ResolvedModel, pick_device, resolve
from qsink.records import RecordStore
from qsink.sweep.plan import Job, Sweep, order, train_done
from qsink.train import load_recipe, train

EXECUTORS = ("local", "ray")


def run_job(job: Job) -> dict:
    """Run one job where this function is called; returns a small picklable summary."""
    t0 = time.perf_counter()
    try:
        status, detail = (_train if job.kind == "train" else _evaluate)(job.payload)
    except QsinkError as e:
        status, detail = "failed", str(e)
    except Exception as e:  # a worker reports, the scheduler decides; the traceback's last line says where
        status, detail = "failed", f"{type(e).__name__}: {e} ({traceback.format_exc().strip().splitlines()[-3].strip()})"
    return {"key": job.key, "status": status, "detail": detail, "wall_s": round(time.perf_counter() - t0, 2),
            "pid": os.getpid()}


def _train(p: dict) -> tuple[str, str]:
    if train_done(p):
        return "skipped", f"checkpoint {p['out']} is complete"
    r = load_recipe(p["recipe"], size=p.get("size"), overrides={"seed": p["seed"]})
    resume = (Path(p["out"]) / "trainer_state.json").is_file()
    res = train(r, Path(p["out"]), resume=resume, device=pick_device(p.get("device", "auto")), log=lambda m: None)
    return "done", f"step {res.step}, val loss {res.val_loss:.4f}" + (" (resumed)" if resume else "")


def _settings(p: dict):
    """The EvalSettings an evaluation job's payload carries as plain data."""
    return EvalSettings(**p["settings"])


def _register(p: dict) -> None:
    """The job's mixture scheme (defined by its sweep block), registered in this worker's process."""
    if p.get("mixture"):
        from qsink.quant.mixture import register_mixtures

        register_mixtures({p["scheme"]: p["mixture"]})


def _evaluate(p: dict) -> tuple[str, str]:
    _register(p)
    settings = _settings(p)
    cell = Cell(p["scheme"], p["handling"])
    cells = [cell] if cell.scheme == "fp" else [Cell("fp"), cell]  # the fp record is there already (a dependency)
    quiet = lambda m: None  # noqa: E731
    text = resolve_data(p.get("data"), None, log=quiet)
    calib = resolve_data(settings.calib_data, None, log=quiet) if cell.scheme != "fp" else None
    outcomes = run_cells([resolve(p["model"])], cells, text, settings, RecordStore(p["records"]), calib_text=calib,
                         log=quiet)
    mine = outcomes[-1]
    if mine.record.get("status") != "ok":
        return "failed", mine.record.get("error", "no record")
    ppl = mine.record["metrics"].get("ppl")
    return ("skipped" if mine.skipped else "done"), f"ppl {ppl:.4g}" if ppl is not None else "ok"


def status(sweep: Sweep) -> dict[str, bool]:
    """Which jobs are done, read from the outputs alone: no job is run, no tokenizer or model loaded."""
    return {key: detail is not None for key, detail in _probe(sweep).items()}


def _probe(sweep: Sweep, strict: bool = True) -> dict[str, str | None]:
    """For each job, what its finished output says (``checkpoint ... is complete``, ``ppl 12.3``, the
    detail a worker would report when skipping it), or ``None`` when it has to run.

    A job is done by the same rules the workers apply (:func:`train_done`, and
    :func:`qsink.evaluate.runner.finished` on the cell's identity), at the cost of a look-up: each
    model is hashed once (its GGUF not parsed, a hub id not fetched: ``resolve(verify=False, fetch=False)``), each text resolved once,
    each records directory listed once, and only the cell's own record is read.

    ``strict=False`` (the executor's pre-pass): a job whose model, text or settings cannot be resolved
    here counts as not done, and its worker reports why, instead of this raising."""
    models: dict[str, ResolvedModel | None] = {}
    texts: dict[str | None, object] = {}
    stores: dict[str, RecordStore] = {}

    def model(spec: str) -> ResolvedModel | None:
        if spec not in models:
            try:
                models[spec] = resolve(spec, verify=False, fetch=False)
            except QsinkError:
                models[spec] = None  # not trained (or not installed) yet
            except Exception:
                if strict:
                    raise
                models[spec] = None
        return models[spec]

    def text(name: str | None):
        if name not in texts:
            try:
                texts[name] = resolve_data(name, None, log=lambda m: None)
            except Exception as e:  # remembered, so a text that cannot be had is tried once, not per job
                texts[name] = e
        if isinstance(texts[name], Exception):
            raise texts[name]
        return texts[name]

    def store(root: str) -> RecordStore:
        if root not in stores:
            stores[root] = RecordStore(root).snapshot()
        return stores[root]

    def probe(job: Job) -> str | None:
        p = job.payload
        if job.kind == "train":
            return f"checkpoint {p['out']} is complete" if train_done(p) else None
        res = model(p["model"])
        if res is None:
            return None
        _register(p)
        settings = _settings(p)
        if settings.force:
            return None
        calib = text(settings.calib_data) if p["scheme"] != "fp" else None
        ident = identity(res, Cell(p["scheme"], p["handling"]), text(p.get("data")), settings,
                         calib.sha256 if calib else None)
        found = finished(store(p["records"]), ident, sqnr=settings.sqnr)
        if found is None:
            return None
        ppl = found[1].get("metrics", {}).get("ppl")
        return f"ppl {ppl:.4g}" if ppl is not None else "ok"

    done: dict[str, str | None] = {}
    for job in sweep.jobs:
        try:
            done[job.key] = probe(job)
        except Exception:
            if strict:
                raise
            done[job.key] = None
    return done


class _Inline:
    slots = 1

    def __init__(self):
        self._out: dict[int, dict] = {}

    def submit(self, job: Job):
        handle = len(self._out)
        self._out[handle] = run_job(job)
        return handle

    def wait(self, handles):
        return [(h, self._out.pop(h)) for h in handles]

    def close(self):
        pass


class _Pool:
    """Spawned worker processes. A worker that dies (kill -9, out of memory) breaks the pool: its
    job and every job then in flight are reported failed, and later jobs get a fresh pool."""

    def __init__(self, workers: int):
        self.slots = workers
        self._pool = self._new()

    def _new(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job: Job):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(run_job, job)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new()
            return self._pool.submit(run_job, job)

    def wait(self, handles):
        from concurrent.futures import FIRST_COMPLETED, wait

        finished, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for f in finished:
            try:
                out.append((f, f.result()))
            except Exception as e:  # BrokenProcessPool: the worker process died
                out.append((f, {"key": None, "status": "failed", "detail": f"worker lost: {type(e).__name__}",
                                "wall_s": 0.0}))
        return out

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Ray:
    slots = 10**9  # Ray queues tasks by their declared resources

    def __init__(self, address: str | None):
        try:
            import ray
        except ImportError:
            raise QsinkError("--executor ray needs Ray: pip install 'qsink[ray]'") from None
        self.ray = ray
        env = {k: v for k, v in os.environ.items() if k.startswith("QSINK_") or k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs = dict(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
            if address is None:
                kwargs.update(include_dashboard=False)
            ray.init(**kwargs)
        self._task = ray.remote(run_job)

    def submit(self, job: Job):
        r = job.resources or {}
        return self._task.options(num_cpus=r.get("num_cpus", 1), num_gpus=r.get("num_gpus", 0),
                                  max_retries=0).remote(job)

    def wait(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for h in ready:
            try:
                out.append((h, self.ray.get(h)))
            except Exception as e:  # the worker process died (kill -9, out of memory)
                out.append((h, {"key": None, "status": "failed", "detail": f"worker lost: {type(e).__name__}",
                                "wall_s": 0.0}))
        return out

    def close(self):
        if self._owns:
            self.ray.shutdown()


JOURNAL = "journal.jsonl"


def _journal(path: Path, job: Job, summary: dict) -> None:
    """One JSON line per finished job (appended, so earlier invocations stay): what ran, how it ended,
    how long it took and where; the source of a sweep's wall times."""
    entry = {"finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "job": job.key,
             "kind": job.kind, **{k: summary.get(k) for k in ("status", "wall_s", "pid", "detail")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def execute(sweep: Sweep, executor: str = "local", workers: int = 1, address: str | None = None,
            on_result: Callable[[Job, dict], None] | None = None) -> list[dict]:
    """Run every job of ``sweep`` in dependency order; returns one summary per job. Each finished job
    (run, skipped, failed or blocked) is appended to ``OUT/journal.jsonl``.

    Jobs whose outputs exist are skipped here, from one look at the outputs (:func:`_probe`), without
    a worker, a process pool or Ray being started for them: a finished sweep says so in the time its
    status takes. A job is only skipped here when every dependency was skipped too, so a job whose
    inputs were (re)made in this run still goes to a worker, which looks again."""
    if executor not in EXECUTORS:
        raise QsinkError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise QsinkError("--executor ray needs Ray: pip install 'qsink[ray]'")
    slots = 10**9 if executor == "ray" else max(workers, 1)  # as _Ray, _Pool and _Inline declare them
    backend = None

    def start():
        if executor == "ray":
            return _Ray(address)
        return _Pool(workers) if workers > 1 else _Inline()

    keys = {j.key for j in sweep.jobs}
    pending, running, results = order(sweep.jobs), {}, {}
    ready_made = _probe(sweep, strict=False)

    def finish(job: Job, summary: dict):
        summary["key"] = job.key
        results[job.key] = summary
        _journal(sweep.out / JOURNAL, job, summary)
        if on_result:
            on_result(job, summary)

    try:
        while pending or running:
            for job in list(pending):
                deps = [results.get(d) for d in job.deps if d in keys]
                if any(d is not None and d["status"] in ("failed", "blocked") for d in deps):
                    pending.remove(job)
                    bad = next(d["key"] for d in deps if d is not None and d["status"] in ("failed", "blocked"))
                    finish(job, {"status": "blocked", "detail": f"{bad} did not finish", "wall_s": 0.0})
                elif all(d is not None for d in deps) and ready_made[job.key] is not None and all(
                        ready_made[d["key"]] is not None and d["status"] == "skipped" for d in deps):
                    pending.remove(job)
                    finish(job, {"status": "skipped", "detail": ready_made[job.key], "wall_s": 0.0, "pid": os.getpid()})
                elif all(d is not None for d in deps) and len(running) < slots:
                    pending.remove(job)
                    backend = backend or start()
                    running[backend.submit(job)] = job
            if running:
                for handle, summary in backend.wait(list(running)):
                    finish(running.pop(handle), summary)
            elif pending:  # nothing can start and nothing runs: unreachable dependencies
                for job in pending:
                    finish(job, {"status": "blocked", "detail": "dependencies never finished", "wall_s": 0.0})
                pending = []
    finally:
        if backend is not None:
            backend.close()
    return [results[j.key] for j in sweep.jobs]
