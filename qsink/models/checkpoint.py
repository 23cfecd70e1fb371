"""Writing a checkpoint directory safely: staged beside its destination, renamed into place."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def staged_checkpoint(out: Path, model, tokenizer):
    """A fresh hidden directory beside ``out`` holding ``model`` and ``tokenizer`` saved as safetensors.

    The caller adds its own files and renames the directory into place; whatever is still there when
    the block ends (an error, an interruption, a rename that did not happen) is removed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
