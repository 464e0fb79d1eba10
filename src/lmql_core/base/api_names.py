"""The public names of the API (``lmql_core.api``), listed once and importing nothing: the API's
``__all__``, the package's lazy attributes (``lmql_core.model``) and the ``lmql`` facade read it."""

API_NAMES = ("LLM", "ScoringResult", "model", "serve", "generate", "generate_sync", "score",
             "score_sync", "set_default_model", "get_default_model", "get_default_scoring_model")
