"""What a query returns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

LEGACY_INDEX_WARNING = (
    "Deprecated result[0] access on a query result detected. Since LMQL 0.7, an argmax/sample query "
    "with a single result returns an LMQLResult instead of a list of one element: use the result "
    "directly, not result[0]. In the future, this will raise an error.")


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

    @property
    def requires_distribution_postprocessing(self) -> bool:
        return self.distribution_variable is not None

    def __getitem__(self, key: Any) -> LMQLResult:
        """``result[0]`` is the result itself (LMQL before 0.7 returned a list of one), with a
        DeprecationWarning as in LMQL 0.7.3; any other index fails as there (AttributeError)."""
        if key != 0:
            raise AttributeError(f"an LMQLResult is not a list: only the legacy result[0] is kept, "
                                 f"not [{key!r}]")
        warnings.warn(LEGACY_INDEX_WARNING, DeprecationWarning, stacklevel=2)
        return self

    def __getattr__(self, name: str) -> Any:
        variables = self.__dict__.get("variables", {})
        if name in variables:
            return variables[name]
        raise AttributeError(name)


def variable_values(result: Any) -> Any:
    """``lmql.F``'s result: each run's variable value (a dict when there are several), a list of
    them when the decoder gives several runs (``n=2``), the value alone for one."""
    if isinstance(result, list):
        values = [_variable_value(r) for r in result]
        return values[0] if len(values) == 1 else values
    return _variable_value(result)


def _variable_value(result: Any) -> Any:
    if not isinstance(result, LMQLResult):
        return result  # a value the query returned
    values = dict(result.variables)
    return next(iter(values.values())) if len(values) == 1 else values
