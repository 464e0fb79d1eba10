"""``import lmql``: the thin facade over lmql-core's API (``lmql.model``, ``lmql.serve``, ...)."""

from lmql_core.api import (
    LLM,
    ScoringResult,
    generate,
    generate_sync,
    model,
    score,
    score_sync,
    serve,
    set_default_model,
)

__all__ = ["LLM", "ScoringResult", "generate", "generate_sync", "model", "score", "score_sync",
           "serve", "set_default_model"]
