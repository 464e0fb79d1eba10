"""One run of a prompt program: the prompt so far, its tokens, and each variable as it is decided.

Tokens follow LMQL 0.7: the text before the first variable is tokenized once (after BOS); when a
variable ends, its value and the prompt text up to the next variable are tokenized separately and
replace the generated tokens (kept as generated when nothing changed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmql_core.api.llm import LLM
from lmql_core.query.chat import RUNTIME, prompt_value, render_role_tags
from lmql_core.query.constraints import And, IsInt, Node, Scope
from lmql_core.query.decision import Decide, Decided, postprocess
from lmql_core.query.decorated import DecoratedVariable, StreamedVariable
from lmql_core.query.errors import QueryError
from lmql_core.query.nested import tactic
from lmql_core.query.qstring import Hole
from lmql_core.query.variable import Variable
from lmql_core.query.vocabulary import Vocabulary
from lmql_core.query.where import parse_where

# Decided, Decide and postprocess live in decision.py (below decoders and nested queries); they
# stay importable from here.
__all__ = ["Decide", "Decided", "Program", "QueryContext", "postprocess"]


@dataclass
class Program:
    """What every run of one query shares."""

    where: str | None
    variables: frozenset[str]  # every prompt variable of the program
    distribution: str | None = None
    globals: dict[str, Any] = field(default_factory=dict)


class QueryContext:
    """The object compiled prompt statements talk to (``__lmql_ctx``)."""

    def __init__(self, program: Program, model: LLM, vocab: Vocabulary, decide: Decide,
                 source_line: Callable[[int], str | None] = lambda line: None) -> None:
        self.program, self.model, self.vocab, self.decide = program, model, vocab, decide
        self.source_line = source_line
        self.prompt_text = ""
        self.variables: dict[str, Any] = {}
        self.reached_distribution = False  # the distribution variable's hole: the run ends there
        self._ids: list[int] | None = None
        self.start_ids: list[int] | None = None  # a nested query's: the outer prompt's tokens
        self._pending = ""  # prompt text not yet tokenized
        self._last: tuple[list[int], Decided] | None = None  # (tokens before it, the last variable)
        # context.num_calls counts from here (None: not at all, after context.set_model)
        self.requests_before: int | None = model.requests

    def hole(self, name: str, type_expr: str | None, decorators: tuple[Any, ...] = ()) -> Hole:
        return Hole(name, type_expr, tuple(decorators))

    def format(self, value: Any) -> Any:
        """What ``{value}`` puts in the prompt (a chat list as role-tagged messages)."""
        return prompt_value(value)

    async def prompt(self, segments: list[Any], where: str | None, scope: dict[str, Any],
                     line: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        holes = frozenset(s.name for s in segments if isinstance(s, Hole))
        try:
            local_where = parse_where(where, holes, self.program.variables)
            for segment in segments:
                if isinstance(segment, Hole):
                    values[segment.name] = await self._fill(segment, local_where, scope)
                else:
                    self._append(str(segment))
        except QueryError as e:
            raise e.at(line, self.source_line(line)) from None
        return values

    def _append(self, text: str) -> None:
        text = render_role_tags(text, first=self.prompt_text == "")
        self.prompt_text += text
        self._pending += text

    async def _fill(self, hole: Hole, local_where: Node | None, scope: dict[str, Any]) -> Any:
        if hole.name == self.program.distribution:
            self.reached_distribution = True
            return None
        where = self._where_for(hole, local_where)
        decorated = self._decorated(hole)
        if decorated is not None:
            where = decorated.constraint(where)
        known = Scope(self.program.globals, scope, dict(self.variables))
        decide = self.decide
        if hole.type_expr is not None and hole.type_expr.strip() != "int":
            where, decide = tactic(hole, where, known, decide)
        if decorated is None:
            variable = Variable(hole.name, where, known, self.vocab)
        else:
            variable = StreamedVariable(hole.name, where, known, self.vocab, on_text=decorated.stream)
        prompt_ids = self._prompt_ids()
        decided = await decide(self, hole.name, prompt_ids, variable)
        if decorated is not None:
            decided = decorated.post(decided)
        self._last = (prompt_ids, decided)
        self.variables[hole.name] = decided.value
        self.prompt_text += decided.prompt_text
        return decided.value

    def _decorated(self, hole: Hole) -> DecoratedVariable | None:
        if not hole.decorators:
            return None
        runtime = self.program.globals.get(RUNTIME)
        return DecoratedVariable(hole.name, list(hole.decorators), runtime, self.prompt_text, self.variables)

    def _where_for(self, hole: Hole, local_where: Node | None) -> Node | None:
        parts = [parse_where(self.program.where, self.program.variables, self.program.variables), local_where]
        if hole.type_expr is not None and hole.type_expr.strip() == "int":  # other types: nested.py
            parts.append(IsInt(hole.name, [], f"[{hole.name}: int]"))
        present = [p for p in parts if p is not None]
        return And(present) if len(present) > 1 else (present[0] if present else None)

    def _prompt_ids(self) -> list[int]:
        """The tokens to generate the next variable after (see the module's docstring)."""
        if self._last is None:
            bos = [self.vocab.bos] if self.vocab.bos is not None else []
            ids = (bos if self.start_ids is None else self.start_ids) + self.vocab.encode(self._pending)
        else:
            before, last = self._last
            if self._pending == "" and last.prompt_text == last.text:
                ids = before + last.ids
            else:
                ids = before + self.vocab.encode(last.prompt_text) + self.vocab.encode(self._pending)
        self._pending = ""
        return ids

    def prompt_ids(self) -> list[int]:
        """The tokens of the prompt so far (BOS first), as the next variable would follow them;
        after the program ends, the whole prompt's (beam search scores the text after the last
        variable)."""
        return self._prompt_ids()
