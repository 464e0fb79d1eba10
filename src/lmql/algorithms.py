"""``import lmql.algorithms as la``: ``la.map``, ``la.reduce`` (see ``lmql_core.query.algorithms``)."""

from lmql_core.query.algorithms import *  # noqa: F403
from lmql_core.query.algorithms import __all__  # noqa: F401
