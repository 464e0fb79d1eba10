"""``lmql.runtime``: the module paths LMQL 0.7.3's documentation and library import from
(``program_state``, ``decorators``, ``output_writer``, ``tracing``, ``lmql_runtime``); each loads
on first use, so ``lmql.runtime.tracing.traced`` works after a bare ``import lmql``."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("decorators", "lmql_runtime", "output_writer", "program_state", "tracing")


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'lmql.runtime' has no attribute '{name}'")
    return importlib.import_module(f"{__name__}.{name}")


def __dir__() -> list[str]:
    return list(_MODULES)
