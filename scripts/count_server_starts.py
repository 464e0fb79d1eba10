"""How many server processes the test suite starts, counted without running it: a pytest plugin
that reads, at collection, the source of every fixture a test uses and of every test function for
the calls that start one (``Server(``, ``LlamaCppServer(``, ``serve_guarded(``), each fixture
counted once per instance of its scope (session, module, class or test, and parameter).

    PYTHONPATH=scripts:$PYTHONPATH python -m pytest --collect-only -q -p count_server_starts

prints the count and each module's share (a shared fixture is counted where it is first used).
Servers started otherwise (``lmql serve`` through the CLI, ``lmql.serve`` in-process) are not
counted: the number is a floor, for comparing two trees."""

from __future__ import annotations

import collections
import inspect
import re
from typing import Any

import pytest

STARTS = re.compile(r"\b(Server|LlamaCppServer|serve_guarded)\(")
SCOPE_KEYS = {"session": lambda item: "", "package": lambda item: "",
              "module": lambda item: item.module.__name__,
              "class": lambda item: item.nodeid.rsplit("::", 1)[0]}


def starts_in(function: Any) -> int:
    """Server starts written in ``function``'s body (after its docstring, if any)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return 0
    body = source.split('"""', 2)[-1] if source.count('"""') >= 2 else source
    return len(STARTS.findall(body))


def fixture_instance(item: pytest.Item, name: str, definition: Any) -> tuple[str, ...]:
    """Which instance of fixture ``name`` serves ``item``: one per scope and parameter."""
    scope = definition.scope if isinstance(definition.scope, str) else definition.scope.value
    scope_key = SCOPE_KEYS.get(scope, lambda item: item.nodeid)(item)
    callspec = getattr(item, "callspec", None)
    param = repr(callspec.params[name]) if callspec is not None and name in callspec.params else ""
    return definition.baseid, name, scope_key, param


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seen: set[tuple[str, ...]] = set()
    per_module: collections.Counter[str] = collections.Counter()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name in item.fixturenames if info is not None else ():
            definitions = info.name2fixturedefs.get(name)
            count = starts_in(definitions[-1].func) if definitions else 0
            instance = fixture_instance(item, name, definitions[-1]) if count else None
            if instance is not None and instance not in seen:
                seen.add(instance)
                per_module[item.module.__name__] += count
        per_module[item.module.__name__] += starts_in(getattr(item, "function", None))
    for module, count in sorted(per_module.items()):
        if count:
            print(f"{count:4d}  {module}")
    print(f"server starts: {sum(per_module.values())}")
