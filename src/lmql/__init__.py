"""``import lmql``: lmql-core's API (``lmql.model``, ``lmql.serve``, ...) and the LMQL query
language (``@lmql.query``, ``lmql.run``, ``lmql.F``)."""

from pathlib import Path as _Path

from lmql_core.api_names import API_NAMES as _API_NAMES
from lmql_core.coexistence import check as _check_installation

_check_installation(_Path(__file__).parent)

from lmql import decorators as decorators  # noqa: E402 (LMQL's lmql.decorators: "[@fn VAR]")
from lmql_core.api import *  # noqa: E402, F403 (the names in API_NAMES)
from lmql_core.query import (  # noqa: E402
    F,
    LMQLResult,
    QueryError,
    query,
    run,
    run_file,
    run_sync,
)

__all__ = [*_API_NAMES, "F", "LMQLResult", "QueryError", "query", "run", "run_file", "run_sync"]
