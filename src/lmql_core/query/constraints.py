"""The ``where`` clause as the query runtime holds it: a tree over prompt variables whose
arguments are Python expressions, evaluated in the query's scope when a variable is generated.

``Node.resolve(V, scope, vocab)`` gives the tree as it stands while V is generated, in the
constraint kinds of ``lmql_core.constraints.kinds`` (which own the masks, stopping, budgets,
postprocessing and JSON form): a leaf on V becomes its kind with its arguments evaluated; a
leaf on a variable already decided, or a Python condition, becomes a ``Truth``; one on a
variable still to come, or a condition that cannot be evaluated yet, imposes nothing.
"""

from __future__ import annotations

import ast
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lmql_core.constraints import kinds
from lmql_core.constraints.kinds import ConstraintError
from lmql_core.constraints.vocabulary import Vocabulary
from lmql_core.query.errors import QueryError

OPERATORS: dict[type, str] = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
                              ast.NotEq: "!="}
FLIPPED = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq,
           ast.NotEq: ast.NotEq}
NOTHING_DEFERRED: Mapping[str, int] = MappingProxyType({})
NEGATED_COUNT: dict[type, type] = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt,
                                   ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}


@dataclass
class Scope:
    """What a constraint's arguments are evaluated in: the query's globals and current locals."""

    globals: dict[str, Any]
    locals: dict[str, Any]
    decided: dict[str, Any]  # prompt variables with their values so far
    tokens: dict[str, int] = field(default_factory=dict)  # how many tokens each was generated as

    def eval(self, node: ast.expr) -> Any:
        code = _compiled.get(node)
        if code is None:
            expression = ast.fix_missing_locations(ast.Expression(node))
            code = _compiled[node] = compile(expression, "<where>", "eval")
        return eval(code, self.globals, {**self.locals, **self.decided})


# a where clause's argument, compiled once; gone with the query that holds it (a process that
# builds queries from strings, one per request, would otherwise keep every one of them)
_compiled: weakref.WeakKeyDictionary[ast.expr, Any] = weakref.WeakKeyDictionary()


class Node:
    def nodes(self) -> Iterator[Node]:
        """This node and every node under it."""
        yield self

    def resolve(self, var: str, scope: Scope, vocab: Vocabulary,
                deferred: Mapping[str, int] = NOTHING_DEFERRED) -> kinds.Rule:
        """The tree as it stands while ``var`` is generated (see the module's docstring);
        ``deferred``: variables generated earlier in the same template request, by hole index,
        whose leaves the server decides (``kinds.Holds``)."""
        raise NotImplementedError

    def negated(self, source: str) -> Node | None:
        """``not`` this node (``source``: its text), where LMQL's NotOp has one; else None."""
        return None

    def python_conditions(self) -> bool:
        """Whether the tree holds a Python condition (which only the query runtime can evaluate)."""
        return any(isinstance(n, Condition) for n in self.nodes())


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
    def resolve(self, var: str, scope: Scope, vocab: Vocabulary,
                deferred: Mapping[str, int] = NOTHING_DEFERRED) -> kinds.Rule:
        return kinds.And([child.resolve(var, scope, vocab, deferred) for child in self.children])


@dataclass
class Or(Junction):
    def resolve(self, var: str, scope: Scope, vocab: Vocabulary,
                deferred: Mapping[str, int] = NOTHING_DEFERRED) -> kinds.Rule:
        return kinds.Or([child.resolve(var, scope, vocab, deferred) for child in self.children])


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

    def resolve(self, var: str, scope: Scope, vocab: Vocabulary,
                deferred: Mapping[str, int] = NOTHING_DEFERRED) -> kinds.Rule:
        return kinds.Truth(self.truth(scope))

    def negated(self, source: str) -> Node | None:
        return Condition(self.expr, self.names, not self.negate)


@dataclass
class Leaf(Node):
    """A constraint on one variable (``var``) with Python arguments (``args``)."""

    var: str
    args: list[ast.expr]
    source: str

    def resolve(self, var: str, scope: Scope, vocab: Vocabulary,
                deferred: Mapping[str, int] = NOTHING_DEFERRED) -> kinds.Rule:
        if var == self.var:
            return self.evaluate(scope)
        if self.var in deferred:
            return kinds.Holds(deferred[self.var], self.evaluate(scope))
        if self.var in scope.decided:
            rule = self.evaluate(scope)
            return kinds.Truth(rule.holds(str(scope.decided[self.var]), vocab, scope.tokens.get(self.var)))
        return kinds.Truth(True)

    def evaluate(self, scope: Scope) -> kinds.Rule:
        """This leaf's kind, its arguments evaluated in ``scope``."""
        try:
            return self.build([scope.eval(a) for a in self.args])
        except ConstraintError as e:
            raise QueryError(f"{self.source}: {e}") from None

    def build(self, args: list[Any]) -> kinds.Rule:
        raise NotImplementedError


@dataclass
class StopsAt(Leaf):
    before: bool = False

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.StopsAt(args[0], self.before)


@dataclass
class Count(Leaf):
    """``len(TOKENS(V)) op n`` (tokens) or ``len(V) op n`` (characters)."""

    compare: type = ast.Lt
    tokens: bool = True

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.Count(OPERATORS[self.compare], args[0], self.tokens)

    def negated(self, source: str) -> Node | None:
        return Count(self.var, self.args, source, compare=NEGATED_COUNT[self.compare], tokens=self.tokens)


@dataclass
class OneOf(Leaf):
    """``V in [options]`` and ``V == s``."""

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.OneOf(args[0])

    def negated(self, source: str) -> Node | None:
        return NoneOf(self.var, self.args, source)


@dataclass
class NoneOf(Leaf):
    """``not V in [options]`` and ``V != s``."""

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.NoneOf(args[0])

    def negated(self, source: str) -> Node | None:
        return OneOf(self.var, self.args, source)


@dataclass
class Contains(Leaf):
    """``s in V`` (``negate``: ``not s in V``)."""

    negate: bool = False

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.Contains(args[0], self.negate)

    def negated(self, source: str) -> Node | None:
        return Contains(self.var, self.args, source, negate=not self.negate)


@dataclass
class IsInt(Leaf):
    """``INT(V)`` and ``[V: int]``."""

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.IsInt()


@dataclass
class Regex(Leaf):
    """``REGEX(V, pattern)`` and ``[V: "pattern"]``."""

    def build(self, args: list[Any]) -> kinds.Rule:
        return kinds.Regex(args[0])
