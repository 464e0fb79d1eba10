"""Runs one program of LMQL's documentation and prints how it ended (for ``lmql_docs.py``).

    python lmql_docs_driver.py lmql|python PROGRAM_FILE MODEL

An ``lmql`` program runs with ``lmql.run_sync(source, model=lmql.model(MODEL))``; a Python
program (a notebook cell) runs with ``MODEL`` as the default model, top-level ``await`` allowed.
Prints ``LMQL_DOC {"ok", "error", "result"}``: ``result`` is the query's variables (or return
value), or the value of a cell's last expression, as text.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import lmql


def summary(value: Any) -> Any:
    if isinstance(value, list):
        return [summary(v) for v in value]
    variables = getattr(value, "variables", None)
    return {k: str(v) for k, v in variables.items()} if isinstance(variables, dict) else str(value)


def run_query(source: str, model: str, path: str) -> Any:
    return lmql.run_sync(source, model=lmql.model(model))


def run_cell(source: str, model: str, path: str) -> Any:
    lmql.set_default_model(lmql.model(model))
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace: dict[str, Any] = {"__name__": "__main__", "lmql": lmql}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for part, mode in ((tree, "exec"), (ast.Expression(last.value) if last else None, "eval")):
        if part is None:
            continue
        # the file's name: a query function's docstring is read back through inspect.getsource
        value = eval(compile(part, path, mode, flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), namespace)
        if inspect.isawaitable(value):
            value = loop.run_until_complete(value)
    return value if last else None


def main(kind: str, path: str, model: str) -> None:
    source = Path(path).read_text()
    try:
        value = (run_query if kind == "lmql" else run_cell)(source, model, path)
        record = {"ok": True, "error": None, "result": summary(value)}
    except Exception as error:  # noqa: BLE001 - how the program ended is the result
        lines = str(error).strip().splitlines()
        record = {"ok": False, "error": f"{type(error).__name__}: {lines[0] if lines else ''}", "result": None}
    print("LMQL_DOC " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
