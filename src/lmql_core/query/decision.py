"""How a prompt variable gets its value: ``Decide`` (generate it now; or, in a search, replay or
suspend) and its outcome, ``Decided``. The runtime (``runtime.QueryContext``) calls a ``Decide``
at each hole; decoders, nested queries and searches supply one, seeing the run as ``RunContext``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lmql_core.api.llm import LLM
from lmql_core.query.constraints import ASCII_DIGITS, IsInt, Node
from lmql_core.query.errors import NotAnInteger
from lmql_core.query.variable import Variable
from lmql_core.query.vocabulary import Vocabulary


@dataclass
class Decided:
    """A variable's outcome: the generated tokens, their text, and the value put in the prompt."""

    ids: list[int]
    text: str
    prompt_text: str
    value: Any


class RunContext(Protocol):
    """What a ``Decide`` sees of the run it decides for (``runtime.QueryContext``)."""

    model: LLM
    vocab: Vocabulary
    decide: Decide
    prompt_text: str
    variables: dict[str, Any]


# How a hole gets its value, given the run, the variable's name, the prompt's tokens before it
# and the variable.
Decide = Callable[[RunContext, str, list[int], Variable], Awaitable[Decided]]


def postprocess(where: Node | None, name: str, text: str) -> tuple[str, Any]:
    """The text a finished value puts in the prompt, and its value: INT makes an int."""
    if where is not None and any(isinstance(n, IsInt) and n.var == name for n in where.nodes()):
        digits = "".join(c for c in text if c in ASCII_DIGITS)  # as LMQL: 0-9, not every Unicode digit
        if not digits:
            raise NotAnInteger(f"INT({name}) ended without a digit: {text!r}")
        return str(int(digits)), int(digits)
    return text, text
