"""A ``where`` expression to a constraint tree, checked before anything is generated."""

from __future__ import annotations

import ast
from functools import lru_cache

from lmql_core.query.constraints import (
    FLIPPED,
    OPERATORS,
    And,
    Condition,
    Contains,
    Count,
    IsInt,
    Node,
    NoneOf,
    OneOf,
    Or,
    Regex,
    StopsAt,
)
from lmql_core.query.errors import QuerySyntaxError, UnknownVariable, UnsupportedConstraint

SUPPORTED = ("STOPS_AT(V, s)", "STOPS_BEFORE(V, s)", "len(TOKENS(V)) < n", "len(V) < n", "V in [...]",
             "V == s", "s in V", "INT(V)", "REGEX(V, r)", "and/or", "not",
             "Python conditions on earlier variables")


@lru_cache(maxsize=256)
def parse_where(source: str | None, generated: frozenset[str], known: frozenset[str]) -> Node | None:
    """The tree of ``source``: a where expression under which the prompt variables ``generated``
    are generated (``known``: all of the program's prompt variables)."""
    if source is None:
        return None
    try:
        expr = ast.parse("(" + source + "\n)", mode="eval").body
    except SyntaxError as e:
        raise QuerySyntaxError(f"invalid where clause: {e.msg}") from None
    return _node(expr, generated, known)


def _node(expr: ast.expr, generated: frozenset[str], known: frozenset[str]) -> Node:
    if isinstance(expr, ast.BoolOp):
        children = [_node(value, generated, known) for value in expr.values]
        return And(children) if isinstance(expr.op, ast.And) else Or(children)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return _negated(expr, generated, known)
    leaf = _leaf(expr, generated, known)
    if leaf is not None:
        return leaf
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    if names & generated:
        raise _unsupported(expr, f"it depends on {', '.join(sorted(names & generated))} while "
                           "that variable is generated")
    return Condition(expr, names)


def _negated(expr: ast.UnaryOp, generated: frozenset[str], known: frozenset[str]) -> Node:
    """``not C``: the complement of C where LMQL's NotOp has one; the error names all of ``not C``."""
    try:
        inner = _node(expr.operand, generated, known)
    except UnsupportedConstraint as e:
        raise _unsupported(expr, e.why) from None
    negated = inner.negated(ast.unparse(expr))
    if negated is not None:
        return negated
    raise _unsupported(expr, "'not' negates conditions on earlier variables, V in [...], V == s, s in V "
                       "and length bounds, not STOPS_AT, INT or REGEX")


def _leaf(expr: ast.expr, generated: frozenset[str], known: frozenset[str]) -> Node | None:
    source = ast.unparse(expr)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        name = expr.func.id
        kinds = {"STOPS_AT": 2, "stops_at": 2, "STOPS_BEFORE": 2, "stops_before": 2, "INT": 1, "REGEX": 2}
        if name not in kinds:
            return None
        if len(expr.args) != kinds[name] or expr.keywords:
            raise QuerySyntaxError(f"{source}: {name} takes {kinds[name]} argument(s)")
        var = _variable(expr.args[0], source, known)
        if name.upper() == "INT":
            return IsInt(var, [], source)
        if name == "REGEX":
            return Regex(var, expr.args[1:], source)
        return StopsAt(var, expr.args[1:], source, before=name.upper() == "STOPS_BEFORE")
    if not isinstance(expr, ast.Compare) or len(expr.ops) != 1:
        return None
    op, left, right = type(expr.ops[0]), expr.left, expr.comparators[0]
    if op in (ast.In, ast.NotIn) and isinstance(right, ast.Name) and right.id in generated:
        _independent(left, generated, expr)
        return Contains(right.id, [left], source, negate=op is ast.NotIn)
    if op in (ast.In, ast.NotIn) and isinstance(left, ast.Name) and left.id in generated:
        kind = OneOf if op is ast.In else NoneOf
        return kind(left.id, [right], source)
    if op in (ast.Eq, ast.NotEq) and isinstance(left, ast.Name) and left.id in generated:
        kind = OneOf if op is ast.Eq else NoneOf
        return kind(left.id, [ast.List([right], ast.Load())], source)
    if op not in OPERATORS:
        return None
    if _length_of(right) is not None and _length_of(left) is None:
        left, right, op = right, left, FLIPPED[op]
    measured = _length_of(left)
    if measured is None:
        return None
    var, tokens = measured
    if var not in known:
        return None
    return Count(var, [right], source, compare=op, tokens=tokens)


def _length_of(expr: ast.expr) -> tuple[str, bool] | None:
    """``len(TOKENS(V))`` → (V, True); ``len(V)`` → (V, False)."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "len"
            and len(expr.args) == 1):
        return None
    inner = expr.args[0]
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "TOKENS":
        if len(inner.args) != 1 or not isinstance(inner.args[0], ast.Name):
            raise QuerySyntaxError(f"{ast.unparse(expr)}: TOKENS takes one prompt variable")
        return inner.args[0].id, True
    if isinstance(inner, ast.Name):
        return inner.id, False
    return None


def _variable(expr: ast.expr, source: str, known: frozenset[str]) -> str:
    if not isinstance(expr, ast.Name) or expr.id not in known:
        raise UnknownVariable(f"{source}: the first argument must be a prompt variable "
                               f"(one of: {', '.join(sorted(known)) or 'none in this query'})")
    return expr.id


def _independent(expr: ast.expr, generated: frozenset[str], whole: ast.expr) -> None:
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)} & generated
    if names:
        raise _unsupported(whole, f"what is looked for depends on {', '.join(sorted(names))}, which is "
                           "being generated")


def _unsupported(expr: ast.expr, why: str) -> UnsupportedConstraint:
    error = UnsupportedConstraint(f"the constraint '{ast.unparse(expr)}' cannot be enforced: {why} "
                                  f"(supported: {', '.join(SUPPORTED)})")
    error.why = why
    return error
