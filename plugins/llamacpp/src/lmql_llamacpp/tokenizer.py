"""Client-side tokenizers for llama.cpp models, through HF ``tokenizers``.

lmql tokenizes on the client, so the client needs the model's ``tokenizer.json``: from
``tokenizer=`` (a folder holding one, or the file itself; Hugging Face hub names are left to
the lmql-hf loader), or else a ``tokenizer.json`` in the same folder as the ``.gguf`` file.
There is no fallback to any other tokenizer: without one, the error says what to pass.
"""

from __future__ import annotations

from pathlib import Path

from lmql_core.plugin import JsonTokenizer, TokenizerNotFound, find_tokenizer_json


def load_llamacpp_tokenizer(model: str, tokenizer: str | None = None) -> JsonTokenizer | None:
    """The tokenizer for the GGUF file ``model``; None lets other loaders try ``tokenizer``."""
    if tokenizer is not None:
        found = find_tokenizer_json(tokenizer)
        return JsonTokenizer.from_file(found) if found else None
    beside = Path(model).expanduser().parent / "tokenizer.json"
    if beside.is_file():
        return JsonTokenizer.from_file(beside)
    raise TokenizerNotFound(
        f"No tokenizer for the llama.cpp model '{model}': lmql tokenizes on the client with "
        f"Hugging Face tokenizers and found no tokenizer.json next to it (looked for {beside}). "
        "Pass the tokenizer of the model the GGUF file was made from: "
        'tokenizer="path/to/folder-with-tokenizer.json", tokenizer="path/to/tokenizer.json", or '
        'a Hugging Face name such as tokenizer="meta-llama/Llama-2-7b-hf" (needs lmql-hf); '
        "on the command line: --tokenizer NAME_OR_PATH."
    )
