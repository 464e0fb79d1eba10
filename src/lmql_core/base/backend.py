"""The interface a model backend implements: batched forward passes at the step level.

The engine decides which sequences step together; a backend only runs the forward pass for
the tokens each sequence appends, keeps that sequence's KV cache until ``release``, and
returns logits. Sampling, logit bias, top-logprobs and finish reasons live in the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lmql_core.base.array_ops import ArrayOps


@dataclass
class StepInput:
    """Tokens that sequence ``seq_id`` appends this step (a prompt chunk or the last sample)."""

    seq_id: int
    tokens: list[int]
    all_logits: bool = False  # logits for every appended token (scoring), not only the last
    # with ``all_logits``: the engine reads only the logits of ``tokens[logits_from:]``; a backend
    # may return just those rows (shape (len(tokens) - logits_from, vocab)) or all of them
    logits_from: int = 0


@dataclass
class StepOutput:
    """``last_logits``: shape (batch, vocab), one row per input in order.
    ``all_logits``: for every input that asked (``StepInput.all_logits``), seq_id -> shape
    (len(tokens), vocab), or (len(tokens) - logits_from, vocab): the rows of the last tokens.
    ``errors``: seq_id -> message, for inputs that failed on their own (a bad token, say): the
    engine ends only those streams, with the message; their rows of ``last_logits`` are ignored
    (fill them with anything). An exception raised by ``forward`` fails the whole batch."""

    last_logits: Any
    all_logits: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


REQUIRED_ATTRIBUTES = {"vocab_size": "the number of token ids (an int)",
                       "ops": "the array operations for its logits (NumpyOps() for numpy arrays)"}


def contract_problems(backend: Any) -> list[str]:
    """What ``backend`` lacks of the attributes every backend must set (empty when none)."""
    problems = [f"{name}: {what}" for name, what in REQUIRED_ATTRIBUTES.items()
                if getattr(backend, name, None) is None]
    if not problems and not (isinstance(backend.vocab_size, int) and backend.vocab_size > 0):
        problems.append(f"vocab_size must be a positive int, not {backend.vocab_size!r}")
    return problems


class Backend(ABC):
    vocab_size: int
    eos_token_id: int | None = None
    bos_token_id: int | None = None  # what clients put before a prompt, when there is one
    max_context: int | None = None  # longest sequence (prompt + generated) it can hold
    max_batch: int | None = None  # most sequences it can hold at once, if limited
    ops: ArrayOps  # array operations that work on this backend's logits

    @abstractmethod
    def forward(self, batch: list[StepInput]) -> StepOutput:
        """Append each input's tokens to its sequence and return the logits."""

    @abstractmethod
    def release(self, seq_id: int) -> None:
        """Forget a sequence (finished or cancelled) and free its cache."""

    def info(self) -> dict[str, Any]:
        """What was loaded and how; sent to clients in MODEL_INFO."""
        return {}

    def tokenizer_json(self) -> str | None:
        """The model's tokenizer as a ``tokenizers`` JSON document, for clients that lack it."""
        return None

    def close(self) -> None:  # noqa: B027 (optional; most backends need nothing)
        """Free the model (called once at shutdown)."""

    def idle(self) -> float | None:
        """Called on the engine's thread while no request is in flight: do one short piece of
        deferred work (the HF backend captures a CUDA graph) and return the seconds after which
        to be called again (0: at once), or None when nothing is left. A request that arrives
        meanwhile waits for that piece, so keep it to tens of milliseconds."""
        return None


# Optional capabilities: a backend has one by defining its methods (no base class to name); the
# engine asks with ``isinstance``.

@runtime_checkable
class ChainedSteps(Protocol):
    """Chained steps: where the device runs behind the host (a GPU), the engine queues the next
    decode step with the tokens the previous step sampled while they are still on the device,
    before the host reads them, and tells their values afterwards. Optional beside them:
    ``rows_order(seq_ids) -> list[int] | None``, a sort key for each sequence (its cache slot, say)
    where the backend runs rows in that order faster; the engine then orders a chained step's
    batch by it whenever the batch changes (None: no preference)."""

    # whether to chain (a backend may have the methods and not want it); read once, as the engine starts
    chains_steps: bool

    def forward_sampled(self, seq_ids: list[int], tokens: Any) -> StepOutput | None:
        """A chained step: append one token to each sequence, given as the device array that
        sampling returned (row i for ``seq_ids[i]``), without the host reading it. Returns None
        where it cannot (the engine then runs an ordinary step)."""

    def confirm(self, seq_ids: list[int], tokens: list[int]) -> None:
        """``tokens[i]``: the value of the token a chained step appended to ``seq_ids[i]``."""


@runtime_checkable
class TakesOver(Protocol):
    """A stream's next sequence continues in its last one's cache (a template's next hole, whose
    prompt mostly extends the tokens before it): no release, new slot or prompt pass for them."""

    def take_over(self, seq_id: int, new_id: int, tokens: list[int]) -> int | None:
        """``new_id`` takes ``seq_id``'s cache (``seq_id`` then holds none), kept for the longest
        prefix of ``tokens`` it holds, and always at least one token short of ``tokens`` (its
        logits are the answer); returns how many tokens it kept. None: ``seq_id`` holds no cache
        here, and nothing changed."""


@runtime_checkable
class ReleasesTogether(Protocol):
    """Frees several sequences (those that ended in one step) at once, where together is cheaper
    than one ``release`` each."""

    def release_all(self, seq_ids: list[int]) -> None: ...


@runtime_checkable
class ChatTemplates(Protocol):
    """Renders chat messages into a prompt with the model's chat template (for OpenAI's
    ``/v1/chat/completions``)."""

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str | None:
        """The prompt text the model's chat template makes of ``messages`` (OpenAI's form: each
        with ``role`` and ``content``), ending where the assistant's answer begins; None where
        the model has no chat template. A conversation the template refuses raises
        ``RequestError`` with the template's reason."""
