"""A seeded random model: real vocabulary size and EOS, no torch. For tests and trying the CLI.

The logits for a position depend only on the seed and the tokens before it, so results do
not depend on how sequences are batched.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from lmql_core.base.array_ops import NumpyOps
from lmql_core.base.backend import Backend, StepInput, StepOutput


class RandomBackend(Backend):
    def __init__(self, model: str = "random", *, seed: int = 0, vocab_size: int = 50257,
                 eos_token_id: int = 50256, max_context: int = 2048, **ignored: Any) -> None:
        self.model = model
        self.seed = int(seed)
        self.vocab_size = int(vocab_size)
        self.eos_token_id = int(eos_token_id)
        self.max_context = int(max_context)
        self.ops = NumpyOps()
        self._contexts: dict[int, list[int]] = {}

    def _logits_after(self, context: list[int]) -> np.ndarray:
        digest = hashlib.blake2b(np.asarray(context[-8:] + [len(context)], dtype=np.int64).tobytes(),
                                 key=self.seed.to_bytes(8, "little", signed=True)).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return rng.standard_normal(self.vocab_size, dtype=np.float32) * 3.0

    def forward(self, batch: list[StepInput]) -> StepOutput:
        last, every = [], {}
        for item in batch:
            context = self._contexts.setdefault(item.seq_id, [])
            rows = []
            last_index = len(item.tokens) - 1
            for index, token in enumerate(item.tokens):
                context.append(token)
                if item.all_logits or index == last_index:
                    rows.append(self._logits_after(context))
            last.append(rows[-1])
            if item.all_logits:
                every[item.seq_id] = np.stack(rows)
        return StepOutput(np.stack(last), every)

    def release(self, seq_id: int) -> None:
        self._contexts.pop(seq_id, None)

    def info(self) -> dict[str, Any]:
        return {"backend": "random", "seed": self.seed, "vocab_size": self.vocab_size,
                "eos_token_id": self.eos_token_id, "max_context": self.max_context}
