"""Variable decorators: ``"[@fn VAR]"`` hooks into how one prompt variable is decided (``lmql.decorators``).

As in LMQL 0.7.3 (``lmql/runtime/decorators.py``, used by its interpreter):

- **pre** runs before the variable is generated, with the variable (``.name``) and the program
  state. Returning the variable itself lets generation go on; returning anything else fixes the
  variable: the model is led through that value's text (``str(value)``, or the second item of a
  returned ``(value, prompt_text)`` pair), every other constraint on it set aside, and the value
  becomes the variable's. The first decorator of a list that fixes it wins.
- **stream** runs as tokens arrive, with the text generated so far. LMQL calls it at every step
  its decoder takes, repeating values; here it is called once with ``""`` before the first token,
  then once after each token (the same values in the same order, without the repeats).
- **post** runs once the value is final (after STOPS_AT trimming and INT), with the value and
  the text it puts in the prompt; it may return a new value (the prompt then shows ``str(value)``),
  a ``(value, prompt_text)`` pair, or None (no change).

A plain callable is a post decorator (called with the value alone, or with value, prompt text
and state when it takes more arguments). In ``[@a @b VAR]``, pre runs ``a`` then ``b``; stream
and post run ``b`` then ``a``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TemplateVariable:
    """The variable a pre decorator sees (LMQL's ``TemplateVariable``)."""

    name: str
    type_expr: str | None = None
    decoder_expr: str | None = None
    decorator_exprs: list[str] | None = None
    function_call: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        parts = [f"@{d}" for d in self.decorator_exprs or []] + [self.name]
        return "[" + " ".join(parts) + (f": {self.type_expr}" if self.type_expr else "") + "]"


@dataclass
class ProgramState:
    """What a decorator gets as ``context`` (LMQL's ``ProgramState``): the prompt before the
    variable, the variables' values and the runtime (``context.runtime.output_writer``)."""

    prompt: str
    runtime: Any = None
    variable_values: dict[str, Any] = field(default_factory=dict)
    variable_program_values: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.variable_values.get(name, default)

    def get_program_value(self, name: str, default: Any = None) -> Any:
        return self.variable_program_values.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def set(self, name: str, value: Any, program_value: Any = None) -> None:
        self.variable_values[name] = value
        self.variable_program_values[name] = value if program_value is None else program_value


class LMQLDecorator:
    """Base class: override ``pre``, ``stream`` and/or ``post``; each default changes nothing."""

    def pre(self, variable: TemplateVariable, context: ProgramState) -> Any:
        return variable

    def stream(self, variable_value: Any, context: ProgramState) -> Any:
        return variable_value

    def post(self, variable_value: Any, prompt_value: str, context: ProgramState) -> tuple[Any, str]:
        return variable_value, prompt_value


def _arity(fn: Callable[..., Any]) -> int:
    return len(inspect.signature(fn).parameters)


class LMQLDecoratorFunction(LMQLDecorator):
    """A plain callable as a post decorator."""

    def __init__(self, decorator: Callable[..., Any]) -> None:
        self.post_fn = decorator
        self.num_args = _arity(decorator)

    def post(self, variable_value: Any, prompt_value: str, context: ProgramState) -> tuple[Any, str]:
        if self.num_args == 1:
            returned = self.post_fn(variable_value)
        else:
            returned = self.post_fn(variable_value, prompt_value, context)
        if returned is None:
            return variable_value, prompt_value
        if isinstance(returned, tuple):
            return returned
        return returned, str(returned)


class pre(LMQLDecorator):  # noqa: N801 (LMQL's name: @lmql.decorators.pre)
    """``@lmql.decorators.pre``: the function runs before generation, with the variable (and the
    state when it takes two arguments); see the module's docstring for what it may return."""

    def __init__(self, decorator_fn: Callable[..., Any]) -> None:
        self.decorator_fn = decorator_fn
        self.num_args = _arity(decorator_fn)

    def pre(self, variable: TemplateVariable, context: ProgramState) -> Any:
        if self.num_args == 1:
            return self.decorator_fn(variable)
        return self.decorator_fn(variable, context)


class streaming(LMQLDecorator):  # noqa: N801 (LMQL's name: @lmql.decorators.streaming)
    """``@lmql.decorators.streaming``: the function runs with ``(text so far, state)`` as tokens
    arrive; what it returns (unless None) is what the next decorator of the list sees."""

    def __init__(self, decorator_fn: Callable[..., Any]) -> None:
        self.decorator_fn = decorator_fn

    def stream(self, variable_value: Any, context: ProgramState) -> Any:
        returned = self.decorator_fn(variable_value, context)
        return variable_value if returned is None else returned


def wrap(decorator: Any) -> LMQLDecorator:
    if isinstance(decorator, LMQLDecorator):
        return decorator
    if callable(decorator):
        return LMQLDecoratorFunction(decorator)
    raise TypeError(f"Not a valid decorator expression: {decorator}")


class LMQLDecoratorList(LMQLDecorator):
    """The decorators of one variable: pre in order, stream and post in reverse order."""

    def __init__(self, decorators: list[Any]) -> None:
        self.decorators = [wrap(d) for d in decorators]

    def pre(self, variable: TemplateVariable, context: ProgramState) -> Any:
        """The variable itself, or ``(value, prompt_text)`` when a decorator fixed it."""
        for decorator in self.decorators:
            returned = decorator.pre(variable, context)
            if returned is not variable:
                if type(returned) is tuple:
                    return returned
                return returned, str(returned)
        return variable

    def stream(self, variable_value: Any, context: ProgramState) -> Any:
        for decorator in reversed(self.decorators):
            variable_value = decorator.stream(variable_value, context)
        return variable_value

    def post(self, variable_value: Any, prompt_value: str, context: ProgramState) -> tuple[Any, str]:
        for decorator in reversed(self.decorators):
            variable_value, prompt_value = decorator.post(variable_value, prompt_value, context)
        return variable_value, prompt_value


__all__ = ["LMQLDecorator", "LMQLDecoratorFunction", "LMQLDecoratorList", "ProgramState", "TemplateVariable",
           "pre", "streaming", "wrap"]
