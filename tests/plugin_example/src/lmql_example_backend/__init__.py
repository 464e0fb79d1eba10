"""A backend written the way a third party would: the next token is always the last one + 1.

Loader options that tests use to reach the corners of the backend contract:
``fail_on=N``: an input that appends token N fails on its own (``StepOutput.errors``);
``scores=False``: ignores ``StepInput.all_logits`` (a backend that cannot score);
``leave_out=NAME``: does not set the attribute NAME (a backend that breaks the contract);
``tokenizer=``: from ``lmql.model("local:...", tokenizer=...)``; only ``counting-bytes``, reported in ``info()``.
The model ``no-tokenizer`` has no tokenizer (a backend whose models may lack one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmql_core.plugin import Backend, BytesTokenizer, NumpyOps, Option, StepInput, StepOutput, hookimpl

VOCAB = 256
CONFIDENCE = 10.0  # the logit of the next token; every other token has 0


def counting_logits(tokens: list[int]) -> np.ndarray:
    """Row i predicts the token after ``tokens[i]``."""
    logits = np.zeros((len(tokens), VOCAB), dtype=np.float32)
    logits[np.arange(len(tokens)), (np.asarray(tokens) + 1) % VOCAB] = CONFIDENCE
    return logits


class CountingBackend(Backend):
    def __init__(self, model: str, *, tokenizer: str | None = None, fail_on: int | None = None,
                 scores: bool = True, leave_out: str | None = None, **kwargs: Any) -> None:
        self.vocab_size = VOCAB
        self.eos_token_id = None
        self.max_context = 1024
        self.ops = NumpyOps()
        if tokenizer not in (None, "counting-bytes"):
            raise ValueError(f"no tokenizer '{tokenizer}' for the counting backend (it has 'counting-bytes')")
        self.tokenizer = tokenizer
        self.fail_on = fail_on
        self.scores = scores
        self.kwargs = kwargs
        if leave_out:  # a backend that forgot a required attribute
            delattr(self, leave_out)

    def forward(self, batch: list[StepInput]) -> StepOutput:
        output = StepOutput(np.stack([counting_logits(item.tokens)[-1] for item in batch]))
        for item in batch:
            if self.fail_on is not None and self.fail_on in item.tokens:
                output.errors[item.seq_id] = f"token {self.fail_on} is not allowed"
            elif item.all_logits and self.scores:
                output.all_logits[item.seq_id] = counting_logits(item.tokens)
        return output

    def release(self, seq_id: int) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"backend": "counting", "kwargs": repr(self.kwargs), "tokenizer": repr(self.tokenizer),
                "fail_on": self.fail_on}


def counting_tokenizer(model: str, tokenizer: str | None = None) -> BytesTokenizer | None:
    """Bytes as token ids, for every model of this backend but ``no-tokenizer`` (None for a
    tokenizer it lacks)."""
    known = tokenizer in (None, "counting-bytes") and model != "no-tokenizer"
    return BytesTokenizer(VOCAB, None) if known else None


# strict: the core refuses other keys (and values of other types) before the backend loads
OPTIONS = {
    "fail_on": Option(int | None, None, "a prompt or generation with this token fails on its own"),
    "scores": Option(bool, True, "False: ignore StepInput.all_logits (a backend that cannot score)"),
    "leave_out": Option(str | None, None, "leave out this required attribute (a broken backend)"),
}


@hookimpl
def register_backends(register: Any) -> None:
    register("counting", CountingBackend, prefixes=("counting:",), description="counts upwards",
             options=OPTIONS, tokenizer=counting_tokenizer)


@hookimpl
def register_commands(register: Any) -> None:
    import click

    @click.command("count-to")
    @click.argument("n", type=int)
    def count_to(n: int) -> None:
        """Print 1..N (a subcommand a plugin adds to `lmql`)."""
        click.echo(" ".join(str(i) for i in range(1, n + 1)))

    @click.command("backends")
    def shadowing() -> None:  # a name the core uses: the core's command stays
        click.echo("the plugin's backends")

    register(count_to)
    register(shadowing)
