"""The bridge to lm-evaluation-harness: downstream accuracy of a (quantized) model, in process.

Two ways in:

* :func:`run_tasks` scores an in-memory model (fp or quantized by :func:`qsink.quant.quantize_`)
  on lm-eval tasks through lm-eval's ``HFLM``, with qsink's local tasks
  (:mod:`qsink.data.tasks`) on the task path. ``qsink evaluate --task ...`` calls it per cell.
* ``qsink-lm-eval`` (or ``python -m qsink.evaluate.lmeval_cli``, :mod:`qsink.evaluate.lmeval_cli`) is lm-eval's own command line with a
  ``qsink`` model type registered and qsink's local tasks on the include path, e.g.::

      qsink-lm-eval run --model qsink --model_args pretrained=smollm2-135m,scheme=w4a4,handling=hadamard \\
          --tasks qsink_cloze --limit 50

Local tasks run fully offline: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set unless a
standard lm-eval task (hellaswag, arc_easy, ...) is asked for, which needs the Hugging Face hub;
when the hub cannot be reached that task fails with a one-line error.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

from qsink.data.tasks import TASKS, prepare_tasks
from qsink.errors import QsinkError
from qsink.files import qsink_home


def hub_environment(local_only: bool) -> None:
    """Keep lm-eval's datasets in qsink's cache; with ``local_only``, forbid the hub (offline tasks)."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(qsink_home() / "hf-datasets"))
    if local_only:
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
        # the libraries read these at import, and transformers has imported them already
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
        try:
            import datasets.config

            datasets.config.HF_DATASETS_OFFLINE = True
            datasets.config.HF_HUB_OFFLINE = True
        except ImportError:
            pass


def check_tasks(names: list[str]) -> None:
    """Refuse unknown names before any compute: local ones must exist, others must be lm-eval's."""
    unknown = [n for n in names if n not in TASKS and not _is_lm_eval_task(n)]
    if unknown:
        raise QsinkError(f"unknown task(s) {', '.join(unknown)}; qsink's local tasks: {', '.join(TASKS.names())} "
                         "(or any task name lm-eval lists with 'lm-eval ls tasks')")


def _is_lm_eval_task(name: str) -> bool:
    return name in _default_task_manager().all_tasks


@lru_cache(maxsize=1)
def _default_task_manager():
    """lm-eval's index of its own ~15k task configs (tens of seconds to build, so once per process)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QsinkError("downstream tasks need lm-eval; pip install 'qsink[eval]' (lm_eval==0.4.13)") from None
    return TaskManager()


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def task_manager(names: list[str], log: Callable[[str], None] = print):
    from lm_eval.tasks import TaskManager

    local = [n for n in names if n in TASKS]
    # no hub in reach: go offline at once (a locally cached dataset still loads, anything else fails
    # fast with the one-line error below instead of minutes of retries)
    hub_environment(local_only=len(local) == len(names) or not hub_reachable())
    if len(local) == len(names):  # index qsink's tasks only, not lm-eval's whole catalogue
        return TaskManager(include_path=str(prepare_tasks(local, log=log)), include_defaults=False)
    return TaskManager(include_path=str(prepare_tasks(local, log=log))) if local else _default_task_manager()


def run_tasks(model, tokenizer, names: list[str], limit: int | None = None, num_fewshot: int | None = None,
              batch_size: int = 4, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Accuracy per task: ``{task: {"acc": .., "acc_stderr": .., "n": .., **other metrics}}``."""
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    check_tasks(names)
    tm = task_manager(names, log=log)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its warnings about in-memory models are expected here
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    from qsink.models.adapter import text_config

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(text_config(model), "max_position_embeddings", None))
    try:
        out = simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot, task_manager=tm,
                              bootstrap_iters=200, log_samples=False, random_seed=seed, numpy_random_seed=seed,
                              torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR")
    except (ConnectionError, OSError) as e:
        raise QsinkError(f"lm-eval could not load its data ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "standard lm-eval tasks need the Hugging Face hub, qsink's local tasks do not") from None
    results = {}
    for name in names:
        raw = out["results"].get(name)
        if raw is None:
            raise QsinkError(f"lm-eval returned no result for task {name!r}")
        metrics = {k.split(",")[0]: v for k, v in raw.items() if "," in k and isinstance(v, (int, float))}
        n = out.get("n-samples", {}).get(name, {})
        metrics["n"] = n.get("effective", n.get("original"))
        results[name] = metrics
    return results
