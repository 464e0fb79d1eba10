"""How a prompt variable gets its value: ``Decide`` (generate it now; or, in a search, replay or
suspend) and its outcome, ``Decided``. The runtime (``runtime.QueryContext``) calls a ``Decide``
at each hole; decoders, nested queries and searches supply one, seeing the run as ``RunContext``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lmql_core.api.llm import LLM
from lmql_core.constraints.kinds import NoDigits, Rule
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.query.errors import NotAnInteger
from lmql_core.query.variable import Variable


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


def postprocess(rule: Rule | None, name: str, text: str) -> tuple[str, Any]:
    """The text a finished value puts in the prompt, and its value (``rule``: the variable's
    constraints, ``Variable.rule``; INT makes an int)."""
    try:
        return (text, text) if rule is None else rule.postprocess(text)
    except NoDigits as e:
        raise NotAnInteger(f"INT({name}) {e}") from None
