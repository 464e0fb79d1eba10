"""``import lmql``: lmql-core's API (``lmql.model``, ``lmql.serve``, ...) and the LMQL query
language (``@lmql.query``, ``lmql.run``, ``lmql.F``)."""

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
from lmql_core.query import (
    F,
    LMQLResult,
    QueryError,
    query,
    run,
    run_file,
    run_sync,
)

__all__ = ["F", "LLM", "LMQLResult", "QueryError", "ScoringResult", "generate", "generate_sync", "model",
           "query", "run", "run_file", "run_sync", "score", "score_sync", "serve", "set_default_model"]
