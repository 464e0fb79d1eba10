"""What a query returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LMQLResult:
    """The final prompt and the prompt variables' values (as LMQL 0.7's ``LMQLResult``).

    With a ``distribution`` clause, ``variables`` also holds ``P(VAR)`` and ``log P(VAR)``: each
    value with its probability among the values.
    """

    prompt: str
    variables: dict[str, Any] = field(default_factory=dict)
    distribution_variable: str | None = None
    distribution_values: list[str] | None = None

    def __getattr__(self, name: str) -> Any:
        variables = self.__dict__.get("variables", {})
        if name in variables:
            return variables[name]
        raise AttributeError(name)
