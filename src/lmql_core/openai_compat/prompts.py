"""A request's model and prompt on its session, with the errors OpenAI's API gives for them."""

from __future__ import annotations

from typing import Any

from lmql_core.errors import LMQLError, RequestError
from lmql_core.lmtp.server.session import Session
from lmql_core.loading.model_host import LoadedModel
from lmql_core.openai_compat.requests import OpenAIError, bad_request


async def served_model(session: Session, name: str) -> LoadedModel:
    try:
        return await session.model(name)
    except LMQLError as e:  # not served (or, loading on demand, not loadable)
        raise OpenAIError(404, str(e), param="model", code="model_not_found") from None


def tokenizer_of(model: LoadedModel) -> Any:
    if model.tokenizer is None:
        raise bad_request(f"the server has no tokenizer for '{model.model_id.served_name}', which "
                          "OpenAI's API needs (text in and out); use LMTP with token ids")
    return model.tokenizer


def encode(session: Session, model: LoadedModel, text: Any, field: str, bos: bool) -> list[int]:
    tokenizer_of(model)
    try:
        return session.encode(model, text, field, bos)
    except RequestError as e:
        raise bad_request(str(e), field) from None


async def chat_ids(session: Session, model: LoadedModel, messages: list[dict[str, Any]]) -> list[int]:
    """The chat template's prompt, tokenized as transformers does (no special tokens added: the
    template writes them)."""
    text = await model.chat_prompt(messages)
    if text is None:
        raise bad_request(f"'{model.model_id.served_name}' has no chat template (its tokenizer configuration "
                          "sets no chat_template); send a prompt to /v1/completions instead", "messages")
    return encode(session, model, text, "messages", bos=False)
