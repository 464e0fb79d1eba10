"""lmql-hf: the Hugging Face transformers backend for lmql-core."""

__version__ = "0.1.0"
