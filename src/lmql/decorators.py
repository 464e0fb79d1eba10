"""``lmql.decorators``: variable decorators (``[@fn VAR]``), as LMQL 0.7 names them.

A decorator hooks into one variable's generation: ``pre`` before it (returning a value instead of
the variable skips generating it), ``stream`` on every new token, ``post`` once it is done (a new
value, a ``(value, prompt text)`` pair, or None to keep it). A plain function is a ``post``.
"""

from __future__ import annotations

from typing import Any


class LMQLDecorator:
    def pre(self, variable: Any, context: Any) -> Any:
        return variable

    def stream(self, variable_value: Any, context: Any) -> Any:
        return variable_value

    def post(self, variable_value: Any, prompt_value: Any, context: Any) -> Any:
        return variable_value, prompt_value


class pre(LMQLDecorator):  # noqa: N801 (LMQL's name)
    """``@lmql.decorators.pre``: ``fn(variable)`` or ``fn(variable, context)`` before generation."""

    def __init__(self, decorator_fn: Any) -> None:
        import inspect

        self.decorator_fn = decorator_fn
        self.num_args = len(inspect.signature(decorator_fn).parameters)

    def pre(self, variable: Any, context: Any) -> Any:
        return self.decorator_fn(variable) if self.num_args == 1 else self.decorator_fn(variable, context)


class streaming(LMQLDecorator):  # noqa: N801 (LMQL's name)
    """``@lmql.decorators.streaming``: ``fn(value, context)`` on every new token."""

    def __init__(self, decorator_fn: Any) -> None:
        self.decorator_fn = decorator_fn

    def stream(self, variable_value: Any, context: Any) -> Any:
        result = self.decorator_fn(variable_value, context)
        return variable_value if result is None else result
