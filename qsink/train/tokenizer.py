"""The training tokenizer, built once from the training text, cached, saved with checkpoints.

``bpe``: a byte-level BPE of ``vocab_size`` tokens (real text). ``word``: one id per
whitespace-separated word of the training text (the synthetic ``bb`` language, whose words are
its tokens). Both put BOS first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from qsink.files import qsink_home
from qsink.errors import QsinkError

BOS, EOS = "<|bos|>", "<|eos|>"


KINDS = ("bpe", "word")


def train_tokenizer(texts: list, vocab_size: int, log=print, kind: str = "bpe"):
    """``texts``: :class:`qsink.data.Text` objects. Returns a ``PreTrainedTokenizerFast`` that puts BOS first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in KINDS:
        raise QsinkError(f"unknown tokenizer {kind!r}; choose from {', '.join(KINDS)}")
    suffix = f"|{vocab_size}" if kind == "bpe" else "|word"
    key = hashlib.sha256(("|".join(t.sha256 for t in texts) + suffix).encode()).hexdigest()[:16]
    cache = qsink_home() / "tokenizers" / key
    if not (cache / "tokenizer.json").is_file():
        if kind == "word":
            words = sorted({w for t in texts for w in t.text.split()})
            log(f"building a {len(words)}-word tokenizer on {', '.join(t.name for t in texts)} (once) ...")
            tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate([BOS, EOS, *words])}, unk_token=EOS))
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        else:
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
