"""The ``where`` clause as a tree of constraints, and the token mask it implies at each step.

Each leaf constrains one prompt variable. While variable V is generated, a leaf on V answers
which next tokens keep the clause satisfiable (``Allowed``); a leaf on a variable already decided
is a plain truth value; one on a variable still to come, or a Python condition that cannot be
evaluated yet, imposes nothing. ``and`` intersects, ``or`` unites. STOPS_AT/STOPS_BEFORE never
mask: they end the variable once their phrase appears (and trim it), as in LMQL.
The masks follow LMQL 0.7's rules, so both runtimes choose the same tokens.
"""

from __future__ import annotations

import ast
import operator
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmql_core.query.errors import QueryError
from lmql_core.query.vocabulary import Vocabulary

COMPARISONS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
FLIPPED = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq,
           ast.NotEq: ast.NotEq}


@dataclass
class Allowed:
    """The next tokens allowed (``None``: any) and whether the variable may end now."""

    tokens: np.ndarray | None
    eos: bool

    def __and__(self, other: Allowed) -> Allowed:
        if self.tokens is None:
            tokens = other.tokens
        elif other.tokens is None:
            tokens = self.tokens
        else:
            tokens = self.tokens & other.tokens
        return Allowed(tokens, self.eos and other.eos)

    def __or__(self, other: Allowed) -> Allowed:
        tokens = None if self.tokens is None or other.tokens is None else self.tokens | other.tokens
        return Allowed(tokens, self.eos or other.eos)


ANY = Allowed(None, True)


@dataclass
class Scope:
    """What a constraint's arguments are evaluated in: the query's globals and current locals."""

    globals: dict[str, Any]
    locals: dict[str, Any]
    decided: dict[str, Any]  # prompt variables with their values so far

    def eval(self, node: ast.expr) -> Any:
        code = _compiled.get(node)
        if code is None:
            expression = ast.fix_missing_locations(ast.Expression(node))
            code = _compiled[node] = compile(expression, "<where>", "eval")
        return eval(code, self.globals, {**self.locals, **self.decided})


# a where clause's argument, compiled once; gone with the query that holds it (a process that
# builds queries from strings, one per request, would otherwise keep every one of them)
_compiled: weakref.WeakKeyDictionary[ast.expr, Any] = weakref.WeakKeyDictionary()


@dataclass
class Value:
    """The variable being generated: its tokens and text so far, and the text the last token added."""

    ids: list[int]
    text: str
    diff: str


class Node:
    def nodes(self) -> Iterator[Node]:
        """This node and every node under it."""
        yield self

    def allowed(self, var: str, value: Value, scope: Scope, vocab: Vocabulary) -> Allowed:
        raise NotImplementedError


@dataclass
class Junction(Node):
    """Constraints joined by ``and`` or ``or``."""

    children: list[Node]

    def nodes(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.nodes()


@dataclass
class And(Junction):
    def allowed(self, var: str, value: Value, scope: Scope, vocab: Vocabulary) -> Allowed:
        result = ANY
        for child in self.children:
            result = result & child.allowed(var, value, scope, vocab)
        return result


@dataclass
class Or(Junction):
    def allowed(self, var: str, value: Value, scope: Scope, vocab: Vocabulary) -> Allowed:
        results = [child.allowed(var, value, scope, vocab) for child in self.children]
        combined = results[0]
        for result in results[1:]:
            combined = combined | result
        return combined


@dataclass
class Condition(Node):
    """Python over earlier variables and inputs: true, false, or (not evaluable yet) no constraint."""

    expr: ast.expr
    names: set[str] = field(default_factory=set)
    negate: bool = False

    def truth(self, scope: Scope) -> bool:
        try:
            return bool(scope.eval(self.expr)) != self.negate
        except NameError:
            return True

    def allowed(self, var: str, value: Value, scope: Scope, vocab: Vocabulary) -> Allowed:
        return ANY if self.truth(scope) else Allowed(vocab.none(), False)


@dataclass
class Leaf(Node):
    """A constraint on one variable (``var``) with Python arguments (``args``)."""

    var: str
    args: list[ast.expr]
    source: str

    def allowed(self, var: str, value: Value, scope: Scope, vocab: Vocabulary) -> Allowed:
        if var == self.var:
            return self.mask(value, [scope.eval(a) for a in self.args], vocab)
        if self.var in scope.decided:
            holds = self.holds(str(scope.decided[self.var]), [scope.eval(a) for a in self.args], vocab)
            return ANY if holds else Allowed(vocab.none(), False)
        return ANY

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        raise NotImplementedError

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        return True


@dataclass
class StopsAt(Leaf):
    before: bool = False

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        return ANY

    def phrase(self, scope: Scope) -> str:
        phrase = scope.eval(self.args[0])
        if not isinstance(phrase, str) or not phrase:
            raise QueryError(f"the stopping phrase of {self.source} must be a non-empty string, "
                             f"not {phrase!r}")
        return phrase

    @staticmethod
    def reached(value: Value, phrase: str) -> bool:
        """LMQL's rule: the phrase ends the value, or a match overlaps what the last token added."""
        index = value.text.rfind(phrase)
        return value.text.endswith(phrase) or (index >= 0 and index >= len(value.text) - len(value.diff))

    def trim(self, value: Value, phrase: str) -> str | None:
        """The value cut at the first match that reaches into the last token's text (None: no match)."""
        text, start_of_diff = value.text, len(value.text) - len(value.diff)
        index = text.rfind(phrase)
        earlier = text.rfind(phrase, 0, index)
        while earlier != -1 and earlier >= start_of_diff:
            index, earlier = earlier, text.rfind(phrase, 0, earlier)
        if index == -1 or index + len(phrase) <= start_of_diff:
            return None
        return text[:index] if self.before else text[:index + len(phrase)]


@dataclass
class Count(Leaf):
    """``len(TOKENS(V)) op n`` (tokens) or ``len(V) op n`` (characters)."""

    compare: type = ast.Lt
    tokens: bool = True

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        op, limit = COMPARISONS[self.compare], args[0]
        if self.tokens:
            now, grow = len(value.ids), len(value.ids) + 1
            tokens = None if _may_grow_into(self.compare, grow, limit) else vocab.none()
            return Allowed(tokens, op(now, limit))
        now = len(value.text)
        if self.compare in (ast.Lt, ast.LtE, ast.Eq):
            bound = COMPARISONS[ast.LtE if self.compare is ast.Eq else self.compare]
            tokens = np.asarray(bound(now + vocab.lengths, limit), dtype=bool)
        else:
            tokens = None
        return Allowed(tokens, op(now, limit))

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        count = len(vocab.encode(text)) if self.tokens else len(text)
        return COMPARISONS[self.compare](count, args[0])


def _may_grow_into(compare: type, size: int, limit: Any) -> bool:
    if compare is ast.Eq:
        return bool(size <= limit)
    if compare in (ast.Lt, ast.LtE):
        return bool(COMPARISONS[compare](size, limit))
    return True


@dataclass
class OneOf(Leaf):
    """``V in [options]``: as LMQL, only the first token of each remaining option's own
    tokenization may come next, and the variable may end once it equals an option."""

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        options = _options(args[0], self.source)
        rests = [o[len(value.text):] for o in options if o.startswith(value.text)]
        return Allowed(vocab.first_tokens([r for r in rests if r]), "" in rests)

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        return text in _options(args[0], self.source)


@dataclass
class NoneOf(Leaf):
    """``not V in [options]``: the variable may not end on one of them."""

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        return Allowed(None, value.text not in _options(args[0], self.source))

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        return text not in _options(args[0], self.source)


@dataclass
class Contains(Leaf):
    """``s in V`` (``negate``: ``not s in V``). As LMQL's InOpStrInStr: ``s in V`` masks no token
    and lets V end once it holds s; ``not s in V`` masks every token whose text holds the rest
    of s that V's end has not begun yet (all of s, or what follows the longest prefix of s that
    V ends with), and lets V end."""

    negate: bool = False

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        phrase = self._phrase(args[0])
        if not self.negate:
            return Allowed(None, phrase in value.text)
        if phrase in value.text:
            return Allowed(vocab.none(), True)  # LMQL's mask when nothing is allowed: EOS alone
        overlap = max((i for i in range(1, len(phrase)) if value.text.endswith(phrase[:i])), default=0)
        return Allowed(~vocab.containing(phrase[overlap:]), True)

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        return (self._phrase(args[0]) in text) != self.negate

    def _phrase(self, phrase: Any) -> str:
        if not isinstance(phrase, str):
            raise QueryError(f"{self.source}: only a string can be looked for in a variable, not {phrase!r}")
        return phrase


def _options(options: Any, source: str) -> list[str]:
    if isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise QueryError(f"{source}: the options must be a list of strings")
    return list(options)


ASCII_DIGITS = frozenset("0123456789")  # INT's digits, as LMQL's: not every Unicode digit


@dataclass
class IsInt(Leaf):
    """``INT(V)``: digits (a leading space allowed), ended by any other token, which the
    postprocessing drops; LMQL's token classes."""

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        text = value.text
        if text == "":
            return Allowed(vocab.matching(r"[ 1-9][0-9]*$"), False)
        if text.strip() == "":
            return Allowed(vocab.matching(r"[1-9][0-9]*$"), False)
        if all(c.strip() in ",0123456789" for c in text):
            return ANY
        return Allowed(vocab.none(), True)

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        digits = text.removeprefix(" ")  # as LMQL 0.7: one leading space, then 0-9 only
        return text != "" and all(c in ASCII_DIGITS for c in digits)


@dataclass
class Regex(Leaf):
    """``REGEX(V, pattern)``: tokens that keep the value a prefix of a match; ends on a full match."""

    def mask(self, value: Value, args: list[Any], vocab: Vocabulary) -> Allowed:
        import regex

        pattern = regex.compile(args[0])
        full = pattern.fullmatch(value.text) is not None
        tokens = np.array([pattern.fullmatch(value.text + t, partial=True) is not None for t in vocab.texts],
                          dtype=bool)
        if vocab.eos is not None:
            tokens[vocab.eos] = False
        return Allowed(tokens, full)

    def holds(self, text: str, args: list[Any], vocab: Vocabulary) -> bool:
        import regex

        return regex.fullmatch(args[0], text) is not None
