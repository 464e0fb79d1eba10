"""lmql-llamacpp: the llama.cpp backend (``llama.cpp:/path/model.gguf``) for lmql-core."""

__version__ = "0.1.0"
