"""LMQL's decoders, named once: what ``LLM.generate`` takes, what a query program may name, and
LMQL 0.7's that we refuse with a message."""

TOKEN_DECODERS = ("argmax", "sample")  # one token at a time: generate and query programs
# searches over hypotheses: query programs only
SEARCH_DECODERS = ("beam", "beam_var", "var", "beam_sample", "best_k")
DECODERS = TOKEN_DECODERS + SEARCH_DECODERS
UNSUPPORTED_DECODERS = ("sample_var",)
