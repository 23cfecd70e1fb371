"""The bridge to lm-evaluation-harness: downstream accuracy of a (quantized) model, in process.

Two ways in:

* :func:`run_tasks` scores an in-memory model (fp or quantized by :func:`qsink.quant.quantize_`)
  on lm-eval tasks through lm-eval's ``HFLM``, with qsink's local tasks
  (:mod:`qsink.data.tasks`) on the task path. ``qsink evaluate --task ...`` calls it per cell.
* ``qsink-lm-eval`` (or ``python -m qsink.evaluate.lmeval``) is lm-eval's own command line with a
  ``qsink`` model type registered and qsink's local tasks on the include path, e.g.::

      qsink-lm-eval run --model qsink --model_args pretrained=smollm2-135m,scheme=w4a4,handling=hadamard \\
          --tasks qsink_cloze --limit 50

Local tasks run fully offline: ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` are set unless a
standard lm-eval task (hellaswag, arc_easy, ...) is asked for, which needs the Hugging Face hub;
when the hub cannot be reached that task fails with a one-line error.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Callable

from qsink.data.tasks import TASKS, prepare_tasks
from qsink.errors import QsinkError

def _environment(local_only: bool) -> None:
    from qsink.config import qsink_home

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
    _environment(local_only=len(local) == len(names) or not hub_reachable())
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
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              max_length=getattr(model.config, "max_position_embeddings", None))
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


def _register() -> None:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    @register_model("qsink")
    class QsinkLM(HFLM):
        """``--model qsink --model_args pretrained=SPEC,scheme=NAME,handling=NAME,calib=N,calib_data=NAME``.

        ``pretrained`` is anything :func:`qsink.models.load` takes (built-in name, .gguf file,
        checkpoint directory); the model is quantized by qsink (fake quantization) before lm-eval
        scores it."""

        def __init__(self, pretrained: str, scheme: str = "fp", handling: str = "none", calib: int = 4,
                     calib_data: str = "austen:train", ctx: int = 512, seed: int = 0, dtype: str = "fp32",
                     device: str | None = None, **kwargs):
            import torch

            if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
                device = "auto"  # lm-eval passes cuda:0 by default; like its HFLM, fall back to what exists
            from qsink.data import resolve_data
            from qsink.models import load
            from qsink.quant import check_combination, get_scheme, quantize_
            from qsink.quant.calibration import calibration_windows

            torch.manual_seed(int(seed))
            model, tok = load(str(pretrained), dtype=dtype, device=device, log=lambda m: None)
            if scheme != "fp":
                check_combination(get_scheme(scheme), handling)
                calib_windows = calibration_windows(tok, resolve_data(calib_data, None), int(calib), int(ctx), int(seed))
                quantize_(model, get_scheme(scheme), handling, calib_windows, tok)
            kwargs.pop("tokenizer", None)
            super().__init__(pretrained=model, tokenizer=tok, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``qsink`` model registered and qsink's local tasks included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("error: qsink-lm-eval needs lm-eval; pip install 'qsink[eval]'")
    _register()
    tasks = []
    for i, a in enumerate(argv):
        if a == "--tasks" and i + 1 < len(argv):
            tasks = argv[i + 1].split(",")
    local = [t for t in tasks if t in TASKS]
    _environment(local_only=bool(tasks) and len(local) == len(tasks))
    if "--include_path" not in argv and argv[:1] not in (["-h"], ["--help"]):
        argv += ["--include_path", str(prepare_tasks(local or None))]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
