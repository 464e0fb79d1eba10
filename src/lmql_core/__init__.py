"""lmql-core: LMQL's local-model inference layer.

Importing this package loads no model library (torch, transformers, llama_cpp); the heavy
parts load when a backend is first used.
"""

from __future__ import annotations

from typing import Any

from lmql_core.base.api_names import API_NAMES

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from lmql_core import api

        return getattr(api, name)
    raise AttributeError(name)
