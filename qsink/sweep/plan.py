"""A sweep: training jobs and evaluation cells as independent jobs with declared dependencies.

A sweep recipe (``recipes/study-cpu.yaml``) names what to train and what to evaluate::

    name: study-cpu
    out: runs/study-cpu               # checkpoints in OUT/train/, records in OUT/records/
    records: results/study-cpu        # optional: the records somewhere else (e.g. a folder kept in git)
    train:
      - recipe: recipes/bb/base.yaml  # each (recipe, seed) is one training job
        seeds: [0, 1]
      - recipe: recipes/bb/sandwich.yaml
    evaluate:                         # one block per group of models; keys as in recipes/eval/*.yaml
      - models: [trained]             # "trained": every checkpoint the train section makes
        data: bb:test
        schemes: [w8a8, w4a4]
        handling: [none, hadamard]
      - models: [smollm2-135m]
        schemes: [w8a8]
    resources:                        # per job, for executors that schedule by resources (Ray)
      train: {num_cpus: 2}
      evaluate: {num_cpus: 1, num_gpus: 0}

Records are the only synchronisation. A training job is done when its checkpoint has reached the
recipe's last step; an evaluation cell is done when its record exists in ``OUT/records/`` (the same
key ``qsink evaluate`` uses). Each quantized cell depends on its model's fp cell (its Δ is taken
against that record), and every cell of a trained model depends on that model's training job.
Running a job whose output already exists does nothing, so rerunning a sweep after any crash runs
only what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qsink.errors import QsinkError
from qsink.evaluate.plan import check_recipe_keys, plan_matrix
from qsink.files import load_yaml
from qsink.train import load_recipe
from qsink.validate import split_names

KEYS = ("name", "out", "records", "train", "evaluate", "resources", "size")
RESOURCE_DEFAULTS = {"train": {"num_cpus": 1, "num_gpus": 0}, "evaluate": {"num_cpus": 1, "num_gpus": 0}}


@dataclass(frozen=True)
class Job:
    """One unit of work; everything a worker process needs is in ``payload`` (plain data)."""

    key: str  # "train:NAME" or "eval:MODEL:CELL"
    kind: str  # "train" | "eval"
    deps: tuple[str, ...]
    payload: dict = field(hash=False, compare=False)
    resources: dict = field(hash=False, compare=False, default_factory=dict)


@dataclass
class Sweep:
    name: str
    out: Path
    jobs: list[Job]
    dropped: list[str]  # scheme x handling pairs left out, with the reason
    records: Path

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)


def _train_out(out: Path, name: str, seed: int, seeds: list[int]) -> Path:
    return out / "train" / (name if len(seeds) == 1 and seed == 0 else f"{name}-seed{seed}")


def load_sweep(path: str | Path, device: str = "auto", out: str | Path | None = None) -> Sweep:
    """Parse and validate a sweep recipe into its job graph (nothing is loaded or trained)."""
    path = Path(path)
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise QsinkError(f"sweep {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}")
    name = raw.get("name") or path.stem
    out_dir = Path(out or raw.get("out") or Path("runs") / name).resolve()  # workers may not share our cwd (Ray)
    records = Path(raw["records"]).resolve() if raw.get("records") and not out else out_dir / "records"
    resources = {kind: {**RESOURCE_DEFAULTS[kind], **(raw.get("resources") or {}).get(kind, {})} for kind in RESOURCE_DEFAULTS}
    if device.startswith("cuda") and not any(r["num_gpus"] for r in resources.values()):
        resources = {k: {**v, "num_gpus": 1} for k, v in resources.items()}
    jobs: list[Job] = []
    trained: list[tuple[str, str]] = []  # (checkpoint dir, training job key)
    for entry in raw.get("train") or []:
        if not isinstance(entry, dict) or "recipe" not in entry:
            raise QsinkError(f"sweep {path}: each train entry needs 'recipe: PATH' (and optionally 'seeds: [..]')")
        recipe_path = (path.parent / entry["recipe"]) if not Path(entry["recipe"]).is_absolute() else Path(entry["recipe"])
        if not recipe_path.is_file():
            recipe_path = Path(entry["recipe"])  # relative to the working directory
        if not recipe_path.is_file():
            raise QsinkError(f"sweep {path}: training recipe {entry['recipe']} not found (relative to the sweep file or here)")
        recipe_path = recipe_path.resolve()
        seeds = [int(s) for s in entry.get("seeds", [0])]
        for seed in seeds:
            r = load_recipe(recipe_path, size=raw.get("size"), overrides={"seed": seed})
            ckpt = _train_out(out_dir, r.name, seed, seeds)
            key = f"train:{ckpt.name}"
            if any(j.key == key for j in jobs):
                raise QsinkError(f"sweep {path}: two training jobs write {ckpt}; give the recipes different names")
            jobs.append(Job(key, "train", (), {"recipe": str(recipe_path), "size": raw.get("size"), "seed": seed,
                                               "out": str(ckpt), "device": device, "steps": r.steps},
                            resources["train"]))
            trained.append((str(ckpt), key))
    dropped: list[str] = []
    blocks = raw.get("evaluate") or []
    if isinstance(blocks, dict):
        blocks = [blocks]
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise QsinkError(f"sweep {path}: evaluate block {i + 1} must be a mapping of evaluate options")
        check_recipe_keys(block, f"{path} (evaluate block {i + 1})")
        models: list[tuple[str, str | None]] = []
        for m in split_names(block.get("models", [])):
            models += trained if m == "trained" else [(m, None)]
        if not models:
            raise QsinkError(f"sweep {path}: evaluate block {i + 1} names no models")
        opts = {k: v for k, v in block.items() if k not in ("models", "out")}
        opts["device"] = device
        cells, why, _, settings = plan_matrix(opts)
        dropped += [w for w in why if w not in dropped]
        for model, train_key in models:
            fp_key = f"eval:{model}:fp"
            for cell in cells:
                key = f"eval:{model}:{cell.label}"
                deps = tuple(d for d in (train_key, None if cell.scheme == "fp" else fp_key) if d)
                payload = {"model": model, "scheme": cell.scheme, "handling": cell.handling,
                           "settings": settings.to_dict(), "data": block.get("data"), "records": str(records)}
                if block.get("mixtures") and cell.scheme in block["mixtures"]:  # a worker registers it again
                    payload["mixture"] = block["mixtures"][cell.scheme]
                same = next((j for j in jobs if j.key == key), None)
                if same is not None and same.payload == payload:
                    continue  # the same cell again (every block has its model's fp cell): one job
                if same is not None:
                    raise QsinkError(f"sweep {path}: {model} [{cell.label}] appears in two evaluate blocks with "
                                     "different settings; give it one")
                jobs.append(Job(key, "eval", deps, payload, resources["evaluate"]))
    if not jobs:
        raise QsinkError(f"sweep {path} has nothing to do: add a 'train' list or an 'evaluate' block")
    # each training job followed by the cells that need it, so finished models come with their results
    # early in a long sweep; then the cells of models that need no training
    grouped = []
    for job in [j for j in jobs if j.kind == "train"]:
        grouped += [job] + [j for j in jobs if j.kind == "eval" and job.key in j.deps]
    grouped += [j for j in jobs if j not in grouped]
    return Sweep(name, out_dir, grouped, dropped, records)


def train_done(payload: dict) -> bool:
    state = Path(payload["out"]) / "trainer_state.json"
    try:
        return json.loads(state.read_text())["step"] >= payload["steps"]
    except (OSError, ValueError, KeyError):
        return False


def order(jobs: list[Job]) -> list[Job]:
    """Topological order that keeps the given order wherever dependencies allow: each step takes the
    first job (in list order) whose dependencies are all placed, so a training job's cells follow it."""
    keys = {j.key for j in jobs}
    placed: set[str] = set()
    out: list[Job] = []
    pending = list(jobs)
    while pending:
        nxt = next((j for j in pending if all(d in placed or d not in keys for d in j.deps)), None)
        if nxt is None:
            raise QsinkError("the sweep's dependencies form a cycle: " + ", ".join(j.key for j in pending))
        out.append(nxt)
        placed.add(nxt.key)
        pending.remove(nxt)
    return out
