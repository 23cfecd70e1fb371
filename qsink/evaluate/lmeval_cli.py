"""``qsink-lm-eval``: lm-eval's own command line with a ``qsink`` model type and qsink's local tasks.

``--model qsink --model_args pretrained=SPEC,scheme=NAME,handling=NAME,calib=N,calib_data=NAME``
loads anything :func:`qsink.models.load` takes and quantizes it the way ``qsink evaluate`` does
(:func:`qsink.evaluate.quantized.quantize_for`, with the same :class:`EvalSettings` checks) before
lm-eval scores it.
"""

from __future__ import annotations

import sys

from qsink.data import resolve_data
from qsink.data.tasks import TASKS, prepare_tasks
from qsink.evaluate.lmeval import hub_environment
from qsink.evaluate.plan import Cell, plan_cells
from qsink.evaluate.quantized import calibration_for, quantize_for
from qsink.evaluate.settings import EvalSettings
from qsink.models import load


def register() -> None:
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
            settings = EvalSettings(calib=calib, calib_data=calib_data, ctx=ctx, seed=seed, dtype=dtype, device=device)
            plan_cells([scheme], [handling])  # refuses an unknown scheme or a meaningless pair before loading
            torch.manual_seed(seed)
            model, tok = load(str(pretrained), dtype=dtype, device=device, log=lambda m: None)
            cell = Cell(scheme, handling)
            calib_windows = None if scheme == "fp" else calibration_for(tok, settings, resolve_data(calib_data, None))
            quantize_for(model, tok, cell, settings, calib_windows)
            kwargs.pop("tokenizer", None)
            super().__init__(pretrained=model, tokenizer=tok, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``qsink`` model registered and qsink's local tasks included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("error: qsink-lm-eval needs lm-eval; pip install 'qsink[eval]'")
    register()
    tasks = []
    for i, a in enumerate(argv):
        if a == "--tasks" and i + 1 < len(argv):
            tasks = argv[i + 1].split(",")
    local = [t for t in tasks if t in TASKS]
    hub_environment(local_only=bool(tasks) and len(local) == len(tasks))
    if "--include_path" not in argv and argv[:1] not in (["-h"], ["--help"]):
        argv += ["--include_path", str(prepare_tasks(local or None))]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
