"""Token ids from servers that name tokens only by their text (llama.cpp's servers, Ollama).

The client's tokenizer (``tokenizer=`` or the one the resolver found) is the model's, so each
token's text maps back to its id where that text is one token's alone. Special tokens are
written as no text by llama.cpp's servers; an empty text therefore stands for EOS.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import cached_property

from lmql_core.errors import LMQLError
from lmql_core.loading.tokenizer import Tokenizer

TOKEN_ID = "token_id:"  # vLLM's return_tokens_as_token_ids


class TokenTexts:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id

    @cached_property
    def pieces(self) -> list[str]:
        return [self.tokenizer.decode([i]) for i in range(int(self.tokenizer.vocab_size))]

    @cached_property
    def ids_by_text(self) -> dict[str, int]:
        """Texts that name one token only (a fragment of a multi-byte character names none)."""
        counts = Counter(self.pieces)
        return {text: i for i, text in enumerate(self.pieces) if counts[text] == 1 and "\ufffd" not in text}

    def token_id(self, token: str) -> int:
        if token.startswith(TOKEN_ID):
            return self.id_of_named(token)
        if token == "" and self.eos is not None:
            return self.eos
        found = self.ids_by_text.get(token)
        if found is None:
            raise LMQLError(f"the server wrote a token as {token!r}, which names no single token of "
                            "the client's tokenizer (a piece of a multi-byte character, or another "
                            "tokenizer than the server's model): pass tokenizer= naming the model's")
        return found

    def top_logprobs(self, tops: dict[str, float] | None) -> dict[str, float]:
        """``{"id": logprob}`` from a server's ``{text: logprob}``; texts that name no token are left out."""
        mapped: dict[str, float] = {}
        for text, logprob in (tops or {}).items():
            try:
                key = str(self.token_id(text))
            except LMQLError:
                continue
            mapped[key] = max(mapped.get(key, -math.inf), float(logprob))
        return mapped

    def prompt_text(self, ids: list[int], server_adds_bos: bool) -> str:
        """The prompt as text for servers that take no token ids. A leading BOS is the server's
        own where it adds one; otherwise it goes as its text (servers parse special tokens)."""
        if server_adds_bos and ids[:1] == [self.bos]:
            ids = ids[1:]
        return self.tokenizer.decode(ids) if ids else ""

    def round_trips(self, ids: list[int]) -> bool:
        """Whether tokenizing the prompt's text again gives these ids (BOS aside)."""
        body = ids[1:] if ids[:1] == [self.bos] and self.bos is not None else ids
        return self.tokenizer.encode(self.tokenizer.decode(body), add_special_tokens=False) == body

    def echo_position(self, echoed: list[str], ids: list[int]) -> int:
        """Where ``ids[j]`` is among the echoed tokens: ``j`` plus this (-1 where the server's
        echo leaves out the leading BOS, as llama.cpp's do)."""
        if not ids or ids[0] != self.bos or not echoed:
            return 0
        try:
            return 0 if self.token_id(echoed[0]) == self.bos else -1
        except LMQLError:
            return -1

    @staticmethod
    def id_of_named(token: str) -> int:
        """A token named by id (``token_id:N``); without a tokenizer, nothing else can be read."""
        if not token.startswith(TOKEN_ID):
            raise LMQLError("the server does not name tokens by id (vLLM's return_tokens_as_token_ids): "
                            "pass tokenizer= naming the model's tokenizer to map its token texts")
        return int(token[len(TOKEN_ID):])
