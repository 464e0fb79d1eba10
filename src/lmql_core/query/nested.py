"""``[VAR: type]``: a variable typed by a query (a nested query), a regular expression or ``int``.

A nested query (``[ANSWER: cot]``, ``[ITEMS: items(4)]``, ``[A: self.method]``) runs inside the
variable, as LMQL 0.7's sub-interpreter does: its prompt continues the outer prompt (text and
tokens), its variables are generated with the outer query's model and decoder, and VAR becomes
its return value, or, when it returns nothing, the text its run added to the prompt. The outer
constraints on VAR hold over everything the inner run adds (its prompt text and its values):

- while the inner query's first prompt text is put in (LMQL forces it as one run of tokens), the
  constraints are checked on its first token and on its last; when they end VAR there, the inner
  query's first variable takes the text put in so far as its value (LMQL's sub-interpreter reads
  it from where VAR began) and the inner query runs on;
- each inner variable is generated under its own constraints and the outer ones, the latter
  read on all the inner text since VAR began;
- when VAR's own STOPS_AT/STOPS_BEFORE phrase is in the last token of the inner run's text, VAR
  is that text cut at the phrase, whatever the inner query returns.
"""

from __future__ import annotations

import ast
import inspect
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from lmql_core.query.constraints import And, Node, Regex, Scope
from lmql_core.query.decision import Decide, Decided, RunContext
from lmql_core.query.decoders import finished
from lmql_core.query.errors import QueryError
from lmql_core.query.qstring import Hole
from lmql_core.query.result import LMQLResult
from lmql_core.query.variable import CHUNK, Step, Variable


def tactic(hole: Hole, where: Node | None, scope: Scope, decide: Decide) -> tuple[Node | None, Decide]:
    """The constraint and the way of deciding a ``[VAR: type]`` hole (``int`` is the runtime's)."""
    expr = hole.type_expr or ""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise QueryError(f"[{hole.name}: {expr}]: the type is not a Python expression") from None
    call = tree if isinstance(tree, ast.Call) else None
    target = _evaluate(hole, call.func if call else tree, scope)
    if _is_query(target):
        args, kwargs = _arguments(hole, call, scope) if call else ((), {})
        return where, inline(target, args, kwargs)
    if isinstance(target, str) and call is None:  # as LMQL: a string is a regular expression
        regex = Regex(hole.name, [ast.Constant(target)], f"[{hole.name}: {expr}]")
        return (And([where, regex]) if where is not None else regex), decide
    raise QueryError(f"[{hole.name}: {expr}]: not a valid type; use int, a regular expression string "
                     "or a query function (with its arguments)")


def _is_query(target: Any) -> bool:
    return getattr(target, "__lmql_query_function__", None) is not None and hasattr(target, "compiled")


def _evaluate(hole: Hole, node: ast.expr, scope: Scope) -> Any:
    try:
        return scope.eval(node)
    except Exception as e:
        raise QueryError(f"[{hole.name}: {hole.type_expr}]: {type(e).__name__}: {e}") from None


def _arguments(hole: Hole, call: ast.Call, scope: Scope) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise QueryError(f"[{hole.name}: {hole.type_expr}]: write the nested query's arguments one by one "
                         "(no * or **)")
    args = tuple(_evaluate(hole, a, scope) for a in call.args)
    return args, {k.arg: _evaluate(hole, k.value, scope) for k in call.keywords if k.arg is not None}


def inline(query: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decide:
    """Decide a variable by running ``query`` inside it (see the module's docstring)."""

    async def decide(outer: RunContext, name: str, prompt_ids: list[int], variable: Variable) -> Decided:
        compiled = query.compiled
        _warn_ignored(compiled)
        inputs, _, _ = compiled.split_kwargs(kwargs)  # as LMQL: the model and decoder are the outer's
        namespace = compiled.namespace()
        fn = compiled.function(tuple(sorted(inputs)) if compiled.params is None else (), namespace)
        program = compiled.program()
        program.globals = namespace
        dropped: list[int] = []  # the inner prompt's tokens LMQL drops when VAR ends inside it
        within = _within(outer.decide, variable, prompt_ids, dropped)
        inner = compiled.context(program, outer.model, outer.vocab, within)
        inner.prompt_text, inner.start_ids = outer.prompt_text, prompt_ids
        call_args = (*query.bound_args, *args)
        try:
            inspect.signature(fn).bind(inner, *call_args, **inputs)
        except TypeError as e:
            raise QueryError(f"[{name}: {compiled.name}(...)]: {e}") from None
        returned = await compiled.call(fn, inner, call_args, inputs)
        ids = inner._prompt_ids()[len(prompt_ids) + len(dropped):]  # the inner run's, after the outer prompt
        stopped = _stopped(variable, ids)
        if stopped is not None:
            return Decided(ids, outer.vocab.decode(ids), stopped, stopped)
        if returned is None:
            returned = LMQLResult(inner.prompt_text, dict(inner.variables))
        if isinstance(returned, LMQLResult):
            added = returned.prompt[len(outer.prompt_text):]
            return Decided(ids, outer.vocab.decode(ids), added, added)
        return Decided(ids, outer.vocab.decode(ids), str(returned), returned)

    return decide


def _warn_ignored(compiled: Any) -> None:
    """LMQL's warnings (its words) for a nested query's own ``from`` clause and decoder."""
    if "from" in compiled.parsed.clauses:
        warnings.warn(f"warning: the specified model of nested query '{compiled.name}' is ignored. Nested "
                      "queries cannot specify their own model.", stacklevel=2)
    if compiled.parsed.decoder is not None:
        warnings.warn(f"warning: the decoder configuration of nested query '{compiled.name}' is ignored. "
                      "Nested queries cannot specify their own decoder.", stacklevel=2)


def _stopped(variable: Variable, ids: list[int]) -> str | None:
    """The outer variable's text cut by its own STOPS_AT/STOPS_BEFORE when the phrase is in the
    last token of what the inner run added; LMQL then takes that text, not the inner result."""
    return variable.cut(ids)


def _within(decide: Decide, outer: Variable, start: list[int], dropped: list[int]) -> Decide:
    """The inner query's ``decide``: its variables also under the outer variable's constraints.
    When VAR ends inside the inner prompt, the tokens of that prompt go to ``dropped``: LMQL's
    sub-interpreter replaces them with the first variable's value (its prompt text keeps both)."""
    first = True

    async def inner_decide(ctx: RunContext, name: str, prompt_ids: list[int],
                           variable: Variable) -> Decided:
        nonlocal first
        prefix = prompt_ids[len(start):]
        at_first, first = first, False
        if outer.where is None:
            return await decide(ctx, name, prompt_ids, variable)
        if at_first:
            cut = _cut_in_prompt(outer, prefix)
            if cut is not None:
                dropped.extend(prefix)
                return finished(name, prefix[:cut], variable)
        own = {f.name: getattr(variable, f.name) for f in fields(variable)}
        return await decide(ctx, name, prompt_ids, Within(**own, outer=outer, prefix=prefix))

    return inner_decide


def _cut_in_prompt(outer: Variable, prefix: list[int]) -> int | None:
    """Where the outer constraints end the variable inside the inner query's first prompt text
    (checked on its first token and its last, as LMQL's forced run of tokens is), or None."""
    if not prefix:
        return None
    if not _allows(outer.step([]), prefix[0]):
        return 0
    if len(prefix) > 1:
        step = outer.step(prefix[:-1])
        if step.done or not _allows(step, prefix[-1]):
            return len(prefix) - 1
    return None


def _allows(step: Step, token: int) -> bool:
    tokens = step.allowed.tokens
    return tokens is None or bool(tokens[token])


@dataclass
class Within(Variable):
    """An inner query's variable that also keeps the outer variable's constraints, read on the
    outer variable's text (``prefix``: the inner tokens before this variable, then its own)."""

    outer: Variable | None = None
    prefix: list[int] = field(default_factory=list)

    def step(self, ids: list[int]) -> Step:
        own = super().step(ids)
        if self.outer is None:
            return own
        theirs = self.outer.step(self.prefix + ids)
        return Step(own.allowed & theirs.allowed, own.stop or theirs.stop)

    def token_limit(self, ids: list[int], chunk: int = CHUNK) -> int:
        own = super().token_limit(ids, chunk)
        if self.outer is None:
            return own
        return min(own, self.outer.token_limit(self.prefix + ids, chunk))
