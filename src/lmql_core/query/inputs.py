"""A query's inputs and outputs by name, as LMQL 0.7's compiler counts them.

Outputs (``output_variables``) are the names a query defines: its prompt variables and the names
its Python statements assign, import or define. Inputs are the names it reads and does not
define; a query from source (``lmql.run``, ``lmql.F``) binds positional arguments to them in
sorted order, as LMQL does (``parameters = sorted(scope.free_vars)`` in its compiler).
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

from lmql_core.query.errors import QueryError

# read by constraints and the runtime, never inputs
PROVIDED = frozenset({"lmql", "context", "TOKENS", "STOPS_AT", "stops_at", "STOPS_BEFORE", "stops_before",
                      "INT", "REGEX", "CHARS", "WORDS", "SENTENCES"})


def defined_names(body: list[ast.stmt], holes: list[str]) -> list[str]:
    """Names the query defines, prompt variables first, each once, in order of appearance."""
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


def positional_inputs(read: set[str], defined: list[str]) -> list[str]:
    """The inputs a query from source binds positional arguments to, in LMQL's (sorted) order."""
    names = read - set(defined) - PROVIDED - set(dir(builtins))
    return sorted(n for n in names if not n.startswith("__lmql"))  # not the compiler's own names


class PositionalInputError(QueryError, TypeError):  # LMQL raises TypeError
    pass


class MissingInputError(QueryError, TypeError):  # LMQL: "Failed to resolve variable ..." (TypeError)
    pass


def check_resolved(names: list[str], inputs: dict[str, Any], namespace: dict[str, Any]) -> None:
    """Every input a query from source reads is given or defined where it was written."""
    missing = [n for n in names if n not in inputs and n not in namespace]
    if missing:
        listed = ", ".join(f"'{n}'" for n in missing)
        example = ", ".join(f"{n}=..." for n in missing)
        plural = len(missing) > 1
        raise MissingInputError(f"Failed to resolve variable{'s' if plural else ''} {listed} in the LMQL "
                                f"query: pass {'them' if plural else 'it'} as input ({example})")


def bind_positional(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` bound to ``names`` in order, under ``kwargs``. As in LMQL, positional inputs are
    taken only when there is one for every input."""
    if len(args) != len(names):
        listed = ", ".join(names) or "none"
        raise PositionalInputError(f"the query takes {len(names)} input(s) by position ({listed}), "
                         f"got {len(args)}: pass them by name or one for each")
    return {**dict(zip(names, args, strict=True)), **kwargs}
