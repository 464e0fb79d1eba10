"""Runs one of LMQL 0.7.3's test files and reports each test function on its own line.

    python lmql_suite_harness.py TEST_FILE

Stands in for ``lmql.tests.expr_test_utils`` (``lmql_suite.py`` rewrites the test files' import
of it to this module), under LMQL 0.7.3 and under lmql-core alike. Unlike LMQL's own
``run_all_tests`` it awaits whatever a test returns (an un-awaited coroutine passes there), catches
every exception per test, and never exits. Lines on stdout:

    LMQL_SUITE_PLAN ["test_a", ...]            the test names found in the file's source
    LMQL_SUITE_RESULT {"name", "ok", "error"}  one per test run
    LMQL_SUITE_FILE_ERROR {"error"}            the file itself failed (import, module-level code)

``lmql_test``, ``LMQLExpr`` and the other helpers rely on LMQL's internals: they come from the
original ``expr_test_utils.py`` named by ``LMQL_SUITE_ORIGINAL_UTILS`` where that imports (LMQL
0.7.3), and elsewhere are stand-ins that fail when a test uses them.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLAN, RESULT, FILE_ERROR = "LMQL_SUITE_PLAN ", "LMQL_SUITE_RESULT ", "LMQL_SUITE_FILE_ERROR "
INTERNAL_HELPERS = ["lmql_test", "LMQLExpr", "fin", "var", "inc", "dec", "SEQ", "enable_show_transformed"]
__all__ = ["run_all_tests", *INTERNAL_HELPERS]

_reported: set[str] = set()


def emit(prefix: str, payload: Any) -> None:
    print(prefix + json.dumps(payload), flush=True)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def event_loop() -> asyncio.AbstractEventLoop:
    """The current loop: main() sets one for the whole file, which LMQL's synchronous calls
    (``call_sync``) also take, as under LMQL's run_all_tests. An in-process model is bound to it."""
    return asyncio.get_event_loop()


def run_test(name: str, test: Callable[[], Any]) -> None:
    try:
        result = test()
        if inspect.isawaitable(result):
            event_loop().run_until_complete(result)
        emit(RESULT, {"name": name, "ok": True, "error": None})
    except BaseException as error:  # noqa: BLE001 - a test's SystemExit is its failure too
        if isinstance(error, KeyboardInterrupt):
            raise
        traceback.print_exc()
        emit(RESULT, {"name": name, "ok": False, "error": first_line(error)})


def run_all_tests(namespace: dict[str, Any]) -> None:
    for name, value in list(namespace.items()):
        if name.startswith("test") and callable(value) and name not in _reported:
            _reported.add(name)
            print(f"Running {name}", file=sys.stderr, flush=True)
            run_test(name, value)


def planned_tests(path: Path, seen: set[Path] | None = None) -> list[str]:
    """Top-level ``test*`` names the file defines or imports (following ``from x import *`` into
    sibling files), in order: what run_all_tests(globals()) would run."""
    seen = seen or set()
    seen.add(path)
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.append(alias.asname or alias.name)
                elif node.module:
                    source = path.parent.joinpath(*node.module.split(".")).with_suffix(".py")
                    if source.exists() and source not in seen:
                        names += planned_tests(source, seen)
    return list(dict.fromkeys(n for n in names if n.startswith("test")))


def original_utils() -> Any:
    """LMQL's own expr_test_utils, or None where its imports of LMQL internals fail."""
    path = os.environ.get("LMQL_SUITE_ORIGINAL_UTILS")
    if not path:
        return None
    try:
        spec = importlib.util.spec_from_file_location("lmql_suite_original_utils", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    except Exception:  # noqa: BLE001 - any failure means: not LMQL 0.7.3
        return None


def unavailable(name: str) -> Any:
    message = f"{name} (lmql.tests.expr_test_utils) needs LMQL 0.7.3's internals"

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(message)

    if name == "lmql_test":  # a decorator: defining the test must work, running it fails
        return lambda function: fail
    return fail


def __getattr__(name: str) -> Any:
    if name not in INTERNAL_HELPERS:
        raise AttributeError(name)
    module = original_utils()
    value = getattr(module, name) if module is not None else unavailable(name)
    globals()[name] = value
    return value


def main(path: Path) -> int:
    sys.modules["lmql_suite_harness"] = sys.modules[__name__]  # the test files import this module
    sys.path.insert(0, str(path.parent))
    emit(PLAN, planned_tests(path))
    asyncio.set_event_loop(asyncio.new_event_loop())
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - module-level code may sys.exit too
        if isinstance(error, KeyboardInterrupt):
            raise
        traceback.print_exc()
        emit(FILE_ERROR, {"error": first_line(error)})
        return 1
    run_all_tests(namespace)  # files that never call it (test_beam_in.py)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
