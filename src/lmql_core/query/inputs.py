"""A query's inputs and outputs by name: which names it reads that nothing defines (its inputs,
checked when it is called) and which it defines (``output_variables``).

As in LMQL 0.7.3 (``lmql_runtime.py``), a name the query reads but never binds must come from
the call's keyword arguments or the query's globals; one that comes from neither fails the call
with a ``TypeError`` naming it, before any model is loaded. A name bound anywhere in the query
(an assignment, a loop, an import, a ``def``, a prompt variable) counts as defined, so the check
never rejects a query that could run.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable
from typing import Any

from lmql_core.query.compiler import prompt_of
from lmql_core.query.errors import QueryError
from lmql_core.query.parser import ParsedQuery
from lmql_core.query.qstring import Hole, parse_qstring

# LMQL's constraint functions (ops.py's registry) and what its compiler lets through unresolved
LMQL_BUILTINS = frozenset({"SENTENCES", "INT", "TOKENS", "WORDS", "len", "REGEX", "STARTS_WITH", "STOPS_AT",
                           "stops_at", "STOPS_BEFORE", "stops_before", "ESCAPED", "escaped", "ERASE",
                           "lmql", "context", "__dynamic__", "input"})


class MissingInput(QueryError, TypeError):
    """An input the call did not give (a ``TypeError``, as LMQL's "Failed to resolve variable")."""

    def __init__(self, names: list[str], line: int | None = None, source_line: str | None = None,
                 cli_file: str | None = None) -> None:
        self.names, self.cli_file = names, cli_file
        quoted = ", ".join(f"'{n}'" for n in sorted(names))  # LMQL's wording and order
        head = (f"Failed to resolve variable {quoted} in LMQL query" if len(names) == 1
                else f"Failed to resolve variables in LMQL query: {quoted}")
        one = len(names) == 1
        if cli_file is not None:
            how = "on the command line: lmql run " + " ".join([cli_file, *(f"--{n} VALUE" for n in names)])
        else:
            how = f"as keyword argument{'' if one else 's'}: " + ", ".join(f"{n}=..." for n in names)
        super().__init__(f"{head}: {'it is an input' if one else 'they are inputs'} of the query; pass "
                         f"{'it' if one else 'them'} {how}", line, source_line)

    def for_cli(self, file: str) -> MissingInput:
        """The same error, saying how to pass the inputs to ``lmql run``."""
        return MissingInput(self.names, self.line, self.source_line, cli_file=file)


def query_reads(body: list[ast.stmt], parsed: ParsedQuery) -> dict[str, int | None]:
    """Every name the query reads (its prompt strings' interpolations and clauses included), with
    the query line of its first use."""
    names = read_names([ast.Module(body, [])])
    for node in ast.walk(ast.Module(body, [])):
        prompt = prompt_of(node) if isinstance(node, ast.stmt) else None
        if prompt is not None and isinstance(prompt[0], ast.Constant):
            for part in parse_qstring(str(prompt[0].value)):
                if not isinstance(part, Hole) and hasattr(part, "expr"):
                    for name in _expr_names(part.expr):
                        names.setdefault(name, node.lineno)  # type: ignore[attr-defined]
                for decorator in part.decorators if isinstance(part, Hole) else ():
                    for name in _expr_names(decorator):
                        names.setdefault(name, node.lineno)  # type: ignore[attr-defined]
    for clause in [parsed.decoder_args, *parsed.clauses.values()]:
        if clause is not None:
            for name in _expr_names(clause.text):
                names.setdefault(name, clause.line)
    return names


def _expr_names(text: str) -> list[str]:
    try:
        tree = ast.parse("(" + text + "\n)", mode="eval")
    except SyntaxError:
        return []
    return list(read_names([tree]))


def read_names(trees: Iterable[ast.AST]) -> dict[str, int | None]:
    """Every name the trees load, with the line of its first use (when known)."""
    names: dict[str, int | None] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                names.setdefault(node.target.id, node.lineno)  # ``x += 1`` reads x too
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                names.setdefault(node.id, getattr(node, "lineno", None))
    return names


def bound_names(trees: Iterable[ast.AST]) -> set[str]:
    """Every name the trees bind anywhere (assignment, loop, import, def, argument, except, ...)."""
    bound: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                bound.add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
            elif isinstance(node, ast.Global | ast.Nonlocal):
                bound.update(node.names)
            elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
                bound.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                bound.add(node.rest)
    return bound


def missing_inputs(reads: dict[str, int | None], bound: set[str], given: Iterable[str],
                   scope: dict[str, object]) -> list[tuple[str, int | None]]:
    """The names read that neither the query, the call, its globals nor Python defines."""
    known = bound | set(given) | LMQL_BUILTINS
    return [(name, line) for name, line in reads.items()
            if name not in known and name not in scope and not hasattr(builtins, name)]


def defined_names(body: list[ast.stmt], holes: list[str]) -> list[str]:
    """Names the query defines, prompt variables first, each once, in order of appearance (LMQL's
    ``output_variables``)."""
    names = list(dict.fromkeys(holes))
    for node in ast.walk(ast.Module(body, [])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined = [node.id]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined = [node.name]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined = [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, ast.arg):  # parameters of functions and lambdas defined in the query
            defined = [node.arg]
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined = [node.name]
        else:
            continue
        names += [n for n in defined if n not in names]
    return names


def positional_inputs(read: Iterable[str], defined: list[str]) -> list[str]:
    """The inputs a query from source binds positional arguments to, in LMQL's (sorted) order
    (``parameters = sorted(scope.free_vars)`` in its compiler)."""
    names = set(read) - set(defined) - LMQL_BUILTINS - {"CHARS"} - set(dir(builtins))
    return sorted(n for n in names if not n.startswith("__lmql"))  # not the compiler's own names


class PositionalInputError(QueryError, TypeError):  # LMQL raises TypeError
    pass


def bind_positional(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` bound to ``names`` in order, under ``kwargs``. As in LMQL, positional inputs are
    taken only when there is one for every input."""
    if len(args) != len(names):
        listed = ", ".join(names) or "none"
        raise PositionalInputError(f"the query takes {len(names)} input(s) by position ({listed}), "
                                   f"got {len(args)}: pass them by name or one for each")
    return {**dict(zip(names, args, strict=True)), **kwargs}
