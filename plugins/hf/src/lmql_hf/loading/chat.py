"""Chat prompts through the model's own chat template (its tokenizer configuration), rendered
by transformers' ``apply_chat_template`` as every HF-based server does."""

from __future__ import annotations

import functools
from typing import Any

from lmql_core.plugin import RequestError


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer  # only when a chat request comes

    return AutoTokenizer.from_pretrained(path)


def chat_prompt(path: str, messages: list[dict[str, Any]]) -> str | None:
    """The prompt text for ``messages``, ending where the assistant's answer begins; None where
    the model's tokenizer configuration has no chat template."""
    tokenizer = _tokenizer(path)
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # the template's own complaint (jinja's raise_exception, a bad role)
        raise RequestError(f"the model's chat template refused these messages: {error}") from None
    return str(rendered)
