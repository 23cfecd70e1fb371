"""A byte-level BPE tokenizer trained once on the training text, cached, saved with checkpoints."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from qsink.config import qsink_home

BOS, EOS = "<|bos|>", "<|eos|>"


def train_tokenizer(texts: list, vocab_size: int, log=print):
    """``texts``: :class:`qsink.data.Text` objects. Returns a ``PreTrainedTokenizerFast`` that puts BOS first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(("|".join(t.sha256 for t in texts) + f"|{vocab_size}").encode()).hexdigest()[:16]
    cache = qsink_home() / "tokenizers" / key
    if not (cache / "tokenizer.json").is_file():
        log(f"training a {vocab_size}-token byte-level BPE on {', '.join(t.name for t in texts)} (once) ...")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator((line for t in texts for line in t.text.split("\n")), trainer)
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent))
        fast.save_pretrained(tmp)
        try:
            os.replace(tmp, cache)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return PreTrainedTokenizerFast.from_pretrained(cache)
