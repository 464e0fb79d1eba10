"""The vocabulary constraints mask over lives in ``lmql_core.constraints.vocabulary`` (the
engine's constraints use it too); importable from here as before."""

from lmql_core.constraints.vocabulary import CACHED_VOCABULARIES, Vocabulary, _cache

__all__ = ["CACHED_VOCABULARIES", "Vocabulary", "_cache"]
