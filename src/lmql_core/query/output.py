"""Output writers (``output_writer=``): what a query shows while it runs, as in LMQL 0.7.

A writer's ``add_interpreter_head_state(variable, head, prompt, where, trace, is_valid,
is_final, mask, num_tokens, program_variables)`` is awaited after every token a variable gets
(and once a variable is done), with the prompt so far; ``program_variables.variable_values``
holds the values so far, the one being generated included. ``lmql.printing`` prints the prompt
each time, ``lmql.stream("VAR")`` prints the named variables' new text, ``lmql.silent`` and
``lmql.headless`` show nothing (``headless`` also refuses ``input()``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProgramVariables:
    variable_values: dict[str, Any] = field(default_factory=dict)


class BaseOutputWriter:
    def __init__(self, allows_input: bool = True) -> None:
        self.allows_input = allows_input

    async def input(self, *args: Any) -> str:
        if not self.allows_input:
            raise AssertionError("current LMQL output writer does not allow input")
        return input(*args)

    async def add_interpreter_head_state(self, variable: str | None, head: int, prompt: str, where: Any,
                                         trace: Any, is_valid: bool, is_final: bool, mask: Any,
                                         num_tokens: int, program_variables: ProgramVariables) -> None:
        pass

    def add_compiler_output(self, code: str) -> None:
        pass


class PrintingOutputWriter(BaseOutputWriter):
    """The whole prompt after every step (the terminal cleared first, with ``clear``)."""

    def __init__(self, clear: bool = False) -> None:
        super().__init__()
        self.clear = clear
        self.print_output = True

    async def add_interpreter_head_state(self, variable: str | None, head: int, prompt: str, where: Any,
                                         trace: Any, is_valid: bool, is_final: bool, mask: Any,
                                         num_tokens: int, program_variables: ProgramVariables) -> None:
        if head != 0:
            return
        if self.clear:
            sys.stderr.write("\033c")
            sys.stderr.flush()
        if self.print_output:
            print(f"{prompt}\n\n valid={is_valid}, final={is_final}")


class StreamingOutputWriter(BaseOutputWriter):
    """The new text of ``variable`` (a name or a list of names, joined by lines) as it comes;
    without one, the whole prompt each time."""

    def __init__(self, variable: str | list[str] | None = None, clear: bool = True) -> None:
        super().__init__()
        self.variable, self.clear = variable, clear
        self.last_value: str | None = None

    async def add_interpreter_head_state(self, variable: str | None, head: int, prompt: str, where: Any,
                                         trace: Any, is_valid: bool, is_final: bool, mask: Any,
                                         num_tokens: int, program_variables: ProgramVariables) -> None:
        if head != 0:
            return
        if self.variable is None:
            if self.clear:
                sys.stderr.write("\033c")
                sys.stderr.flush()
            print(f"{prompt}\n", end="\r")
            return
        names = self.variable if isinstance(self.variable, list) else [self.variable]
        values = program_variables.variable_values
        value = "\n".join(str(values.get(name, "")).strip() for name in names)
        shown = value if self.last_value is None else value[len(self.last_value):]
        self.last_value = value
        print(shown, end="", flush=True)


silent = BaseOutputWriter()
headless = BaseOutputWriter(allows_input=False)
stream = StreamingOutputWriter
printing = PrintingOutputWriter(clear=True)


async def show(writer: Any, variable: str | None, prompt: str, values: dict[str, Any], num_tokens: int,
               is_final: bool = False) -> None:
    """Tell ``writer`` (any object with LMQL's writer method, or None) where the run stands."""
    add = getattr(writer, "add_interpreter_head_state", None)
    if add is not None:
        await add(variable, 0, prompt, None, None, True, is_final, None, num_tokens, ProgramVariables(values))
