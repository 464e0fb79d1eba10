"""The LMQL query language on lmql-core: prompt programs with constrained variables.

A client-side layer above ``LLM`` and the transports: it works against any LMTP server,
in-process or served, ours or LMQL 0.7's, and never imports torch.
"""

from lmql_core.query.api import (
                                 F,
                                 QueryFunction,
                                 main,
                                 query,
                                 query_from_string,
                                 run,
                                 run_file,
                                 run_in_loop,
                                 run_sync,
)
from lmql_core.query.errors import QueryError, QuerySyntaxError, UnsupportedConstraint
from lmql_core.query.result import LMQLResult

__all__ = ["F", "LMQLResult", "QueryError", "QueryFunction", "QuerySyntaxError", "UnsupportedConstraint",
           "main", "query", "query_from_string", "run", "run_file", "run_in_loop", "run_sync"]
