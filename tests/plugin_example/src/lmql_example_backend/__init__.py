"""A backend written the way a third party would: the next token is always the last one + 1."""

from __future__ import annotations

from typing import Any

import numpy as np

from lmql_core.backend import Backend, StepInput, StepOutput
from lmql_core.engine.array_ops import NumpyOps
from lmql_core.hookspecs import hookimpl
from lmql_core.tokenizer import BytesTokenizer

VOCAB = 256


class CountingBackend(Backend):
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.vocab_size = VOCAB
        self.eos_token_id = None
        self.max_context = 1024
        self.ops = NumpyOps()
        self.kwargs = kwargs

    def forward(self, batch: list[StepInput]) -> StepOutput:
        logits = np.zeros((len(batch), VOCAB), dtype=np.float32)
        for row, item in enumerate(batch):
            logits[row, (item.tokens[-1] + 1) % VOCAB] = 10.0
        return StepOutput(logits)

    def release(self, seq_id: int) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"backend": "counting", "kwargs": repr(self.kwargs)}


@hookimpl
def register_backends(register: Any) -> None:
    register("counting", CountingBackend, prefixes=("counting:",), description="counts upwards")


@hookimpl
def register_tokenizers(register: Any) -> None:
    def load(model: str, tokenizer: str | None = None, backend: str | None = None, **_: Any) -> Any:
        return BytesTokenizer(VOCAB, None) if backend == "counting" else None

    register("counting", load)
