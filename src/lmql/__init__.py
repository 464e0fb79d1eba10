"""``import lmql``: lmql-core's API (``lmql.model``, ``lmql.serve``, ...) and the LMQL query
language (``@lmql.query``, ``lmql.run``, ``lmql.F``), with the public names of LMQL 0.7.

Every name loads on first use, so ``import lmql`` itself stays light (no numpy, no torch).
"""

from __future__ import annotations

import importlib
from pathlib import Path as _Path
from typing import Any

from lmql_core.base.api_names import API_NAMES as _API_NAMES
from lmql_core.base.coexistence import check as _check_installation

_check_installation(_Path(__file__).parent)

# name -> the module that holds it
_LAZY = {
    **{name: "lmql_core.api" for name in _API_NAMES},
    **{name: "lmql_core.query" for name in ("F", "LMQLResult", "QueryError", "query", "query_from_string",
                                             "run", "run_file", "run_sync", "main", "run_in_loop")},
    **{name: "lmql_core.query.output" for name in ("printing", "silent", "headless", "stream")},
    "tokenizer": "lmql_core.api.lmql_tokenizer",
    "traced": "lmql_core.api.tracing",
    "Tracer": "lmql_core.api.tracing",
    "certificate": "lmql_core.api.certificate",
    "InferenceCertificate": "lmql_core.api.certificate",
    "tag": "lmql_core.query.chat",
}
_RENAMED = {"LMQLQueryFunction": ("lmql_core.query", "QueryFunction")}
# name -> the submodule it is (LMQL 0.7.3 reaches some under two names)
_SUBMODULES = {"algorithms": "algorithms", "decorators": "decorators", "version": "version",
               "version_info": "version", "lmql_runtime": "runtime.lmql_runtime",
               "runtime_support": "runtime.lmql_runtime", "runtime": "runtime", "language": "language"}

__all__ = [*_LAZY, *_RENAMED, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{_SUBMODULES[name]}")
    elif name == "__version__":
        from lmql_core import __version__ as value
    else:
        raise AttributeError(f"module 'lmql' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__"})
