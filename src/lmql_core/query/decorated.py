"""A decorated prompt variable (``"[@fn VAR]"``) during one run: its decorators' pre, stream and
post stages around the variable's generation (their semantics: ``decorators``)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from lmql_core.query.constraints import Node, OneOf
from lmql_core.query.decision import Decided
from lmql_core.query.decorators import LMQLDecoratorList, ProgramState, TemplateVariable
from lmql_core.query.variable import Step, Variable


@dataclass
class StreamedVariable(Variable):
    """A variable whose text so far goes to ``on_text`` at every step (before each token is chosen)."""

    on_text: Callable[[str], None] | None = None

    def step(self, ids: list[int]) -> Step:
        if self.on_text is not None:
            self.on_text(self.value(ids).text)
        return super().step(ids)


class DecoratedVariable:
    def __init__(self, name: str, decorators: list[Any], runtime: Any, prompt: str,
                 variables: dict[str, Any]) -> None:
        self.name, self.runtime, self.prompt = name, runtime, prompt
        self.variables = dict(variables)
        self.chain = LMQLDecoratorList(decorators)
        self.fixed: Any = None  # the value a pre decorator fixed (None: the generated text, as LMQL)
        self.template = TemplateVariable(name, decorator_exprs=[_label(d) for d in decorators])

    def state(self, text: str | None = None) -> ProgramState:
        """The program state a decorator sees: the variable's text so far when it has one."""
        state = ProgramState(self.prompt, self.runtime, dict(self.variables), dict(self.variables))
        if text is not None:
            state.set(self.name, text)
        return state

    def constraint(self, where: Node | None) -> Node | None:
        """Pre: the variable's constraint, or one fixing it to a pre decorator's value."""
        returned = self.chain.pre(self.template, self.state())
        if returned is self.template:
            return where
        self.fixed, text = returned
        options = ast.List([ast.Constant(text)], ast.Load())
        return OneOf(self.name, [options], f"{self.name} in [{text!r}]")

    def stream(self, text: str) -> None:
        self.chain.stream(text, self.state(text))

    def post(self, decided: Decided) -> Decided:
        value = decided.value if self.fixed is None else self.fixed
        value, prompt_text = self.chain.post(value, decided.prompt_text, self.state(decided.text))
        return replace(decided, value=value, prompt_text=prompt_text)


def _label(decorator: Any) -> str:
    return getattr(decorator, "__name__", None) or type(decorator).__name__
