"""A byte-level BPE trained on this machine's text (nothing downloads): the benchmarks' large
vocabularies, where a model folder has no tokenizer or a test needs a 151k one."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"


def _texts(corpus_globs: list[str], max_chars: int) -> Iterator[str]:
    total = 0
    for pattern in corpus_globs:
        for name in sorted(glob.glob(pattern, recursive=True)):
            text = Path(name).read_text(encoding="utf-8", errors="ignore")
            total += len(text)
            yield text
            if total > max_chars:
                return


def train_bpe(corpus_globs: list[str], vocab: int, *, eos_last: bool = False, min_frequency: int = 0,
              max_chars: int = 120_000_000) -> Any:
    """``vocab`` tokens, ``EOS`` among them: its id is 0, or ``vocab - 1`` with ``eos_last`` (GPT-2's
    place for it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 1 if eos_last else vocab, min_frequency=min_frequency,
                                  special_tokens=[] if eos_last else [EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(corpus_globs, max_chars), trainer)
    if eos_last:
        tok.add_special_tokens([EOS])
    return tok
