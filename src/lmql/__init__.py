"""``import lmql``: lmql-core's API (``lmql.model``, ``lmql.serve``, ...) and the LMQL query
language (``@lmql.query``, ``lmql.run``, ``lmql.F``)."""

from pathlib import Path as _Path

from lmql_core.coexistence import check as _check_installation

_check_installation(_Path(__file__).parent)

from lmql_core.api import (  # noqa: E402
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
from lmql_core.query import (  # noqa: E402
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
