"""Calls and ``context`` in a query body, compiled as LMQL 0.7 compiles them.

Every call at the body's level goes through ``call``, which awaits what a query or a coroutine
function gives, so ``inner()`` and ``await inner()`` both give the inner query's result (LMQL
drops the ``await`` and awaits in ``call``). ``context`` reads as the run's ``LMQLContext``.
Nested functions, lambdas and generator expressions are left as written (an ``await`` cannot go
there), and so are ``asyncio.*(...)`` calls with their arguments, which take awaitables
(``await asyncio.gather(q1(), q2())``; LMQL would await each query first and fail).
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

CALL = "__lmql_call"
CALL_AWAITED = "__lmql_call_awaited"
CONTEXT = "__lmql_context"
# put before the compiled query function: the names the rewritten body uses
PRELUDE = (f"from lmql_core.query.calls import call as {CALL}, call_awaited as {CALL_AWAITED}\n"
           f"from lmql_core.query.context import LMQLContext as {CONTEXT}\n")
# LMQL's exceptions, the other builtins that read their caller's frame, and our own names
NOT_WRAPPED = frozenset({"print", "eval", "locals", "globals", "exec", "vars", "dir", "super",
                         CALL, CALL_AWAITED, CONTEXT})


class BodyCalls(ast.NodeTransformer):
    def __init__(self, ctx_name: str) -> None:
        self.ctx_name = ctx_name
        self.wrapping = True  # off inside asyncio.*(...): those take awaitables (gather, create_task)

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_ClassDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef
    visit_GeneratorExp = visit_FunctionDef

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "context" and isinstance(node.ctx, ast.Load):
            view = ast.Call(ast.Name(CONTEXT, ast.Load()), [ast.Name(self.ctx_name, ast.Load())], [])
            return ast.copy_location(view, node)
        return node

    def visit_Await(self, node: ast.Await) -> ast.AST:
        value = self.visit(node.value)
        if isinstance(node.value, ast.Call) and isinstance(value, ast.Await):
            value.value.func.id = CALL_AWAITED  # type: ignore[attr-defined]
            return value  # awaited by the call's rewrite
        node.value = value
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if _is_asyncio(func) or not self.wrapping:
            wrapping, self.wrapping = self.wrapping, False
            self.generic_visit(node)
            self.wrapping = wrapping
            return node
        self.generic_visit(node)
        if isinstance(func, ast.Name) and func.id in NOT_WRAPPED:
            return node
        owner = func.value if isinstance(func, ast.Attribute) else None
        if isinstance(owner, ast.Name) and owner.id == self.ctx_name:
            return node  # the runtime's own calls (prompt statements, holes)
        wrapped = ast.Await(ast.Call(ast.Name(CALL, ast.Load()), [func, *node.args], node.keywords))
        return ast.copy_location(wrapped, node)


def _is_asyncio(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "asyncio"


async def call_awaited(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``await fn(...)`` as written: ``call``, then whatever awaitable it gave is awaited too."""
    result = await call(fn, *args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` from a query body: a query runs on this loop (sync or async, it
    is awaited), a coroutine function is awaited, anything else is called."""
    if getattr(type(fn), "run_in_query", None) is not None:
        return await fn.run_in_query(*args, **kwargs)
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    return fn(*args, **kwargs)
