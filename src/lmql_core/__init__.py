"""lmql-core: LMQL's local-model inference layer.

Importing this package loads no model library (torch, transformers, llama_cpp); the heavy
parts load when a backend is first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# The public names of the API (``lmql_core.api``), listed once: ``lmql_core.api.__all__``, the
# lazy attributes below and the ``lmql`` facade's names come from here.
API_NAMES = ("LLM", "ScoringResult", "model", "serve", "generate", "generate_sync", "score",
             "score_sync", "set_default_model")


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from lmql_core import api

        return getattr(api, name)
    raise AttributeError(name)
