"""OpenAI's request bodies, read into what an LMTP session takes.

Only what is OpenAI's own is checked here (``n``, ``stream``, ``echo``, ``stop``, the prompt's
forms, chat messages); every field LMTP also has (token ids, sampling options, the context, text)
is passed on in an LMTP body and checked by the session, the one place that checks those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError, shown

MAX_CHOICES = 128  # n
MAX_STOP_STRINGS = 16
# passed on to the session as they are (it checks them); OpenAI's names are LMTP's
SAMPLING_FIELDS = ("temperature", "top_p", "logit_bias", "seed", "repetition_penalty")
DEFAULT_TEMPERATURE = 1.0  # OpenAI's (LMTP's is 0: greedy)
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI and vLLM


class OpenAIError(LMQLError):
    """A request answered with an error in OpenAI's shape and an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


@dataclass
class CompletionRequest:
    """A completion (``chat``: a chat completion) request, its own fields checked."""

    model: str
    chat: bool
    prompts: list[str | list[int]] = field(default_factory=list)  # completions: text or token ids
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None  # top log-probs per token (beside the chosen one); None: none
    max_tokens: int | None = None  # None: until EOS or the context ends
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)  # LMTP's fields, for the session to check
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: log-probs name "token_id:N"


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON: {shown(e, 200)}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def model_name(body: dict[str, Any]) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad_request("'model' must name the served model (see GET /v1/models)", "model")
    return name


def completion_request(body: dict[str, Any], top_logprobs_limit: int) -> CompletionRequest:
    request = _common(body, chat=False)
    request.prompts = prompts(body.get("prompt"))
    request.echo = _flag(body, "echo")
    request.logprobs = _optional_int(body, "logprobs", 0, top_logprobs_limit)
    if body.get("suffix") is not None:
        raise bad_request("'suffix' is not supported", "suffix")
    low = 0 if request.echo else 1  # max_tokens 0 with echo: score the prompt only
    request.max_tokens = _optional_int(body, "max_tokens", low, None)
    if request.max_tokens is None:
        request.max_tokens = DEFAULT_COMPLETION_TOKENS
    return request


def chat_request(body: dict[str, Any], top_logprobs_limit: int) -> CompletionRequest:
    request = _common(body, chat=True)
    request.messages = messages(body.get("messages"))
    if _flag(body, "logprobs"):
        request.logprobs = _optional_int(body, "top_logprobs", 0, top_logprobs_limit) or 0
    elif body.get("top_logprobs"):
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    request.max_tokens = _optional_int(body, name, 1, None)
    return request


def _common(body: dict[str, Any], chat: bool) -> CompletionRequest:
    request = CompletionRequest(model=model_name(body), chat=chat)
    request.n = _optional_int(body, "n", 1, MAX_CHOICES) or 1
    if body.get("best_of") not in (None, 1, request.n):
        raise bad_request("'best_of' is not supported (leave it out, or equal to 'n')", "best_of")
    request.stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        request.include_usage = _flag(options, "include_usage")
    request.stop = stop_strings(body.get("stop"))
    request.stop_token_ids = _int_list(body, "stop_token_ids")
    request.tokens_as_ids = _flag(body, "return_tokens_as_token_ids")
    request.sampling = {**sampling_fields(body), **constraint_fields(body)}
    return request


def sampling_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The LMTP body's decoding fields. OpenAI's default temperature is 1; ``top_k`` -1 means
    all tokens (vLLM); penalties of 0 are no penalty (clients send them so)."""
    sampling = {name: body[name] for name in SAMPLING_FIELDS if body.get(name) is not None}
    sampling.setdefault("temperature", DEFAULT_TEMPERATURE)
    top_k = body.get("top_k")
    if top_k is not None and top_k != -1:
        sampling["top_k"] = top_k
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty) not in (None, 0):
            sampling[penalty] = body[penalty]  # the session refuses it with its reason
    return sampling


# vLLM's structured outputs (``structured_outputs``, and its older ``guided_*`` fields) as LMTP's
# constraint fields; ``choice`` becomes a grammar of its strings
STRUCTURED_KINDS = {"regex": "regex", "grammar": "grammar", "json": "json_schema", "choice": "grammar"}
GUIDED_FIELDS = ("guided_regex", "guided_grammar", "guided_json", "guided_choice")


def constraint_fields(body: dict[str, Any]) -> dict[str, Any]:
    """``response_format`` (OpenAI: ``json_schema``, ``json_object``, ``text``) and vLLM's
    ``structured_outputs`` (``regex``, ``choice``, ``grammar``, ``json``) as the LMTP field the
    session compiles (it checks the constraint itself); at most one may be given. ``fast_forward``
    (an extension; default true) is LMTP's: false samples forced text token by token."""
    asked = _response_format(body.get("response_format"))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise bad_request("'structured_outputs' must be an object", "structured_outputs")
        asked += [_structured(key, value, f"structured_outputs.{key}")
                  for key, value in outputs.items() if value is not None]
    asked += [_structured(name.removeprefix("guided_"), body[name], name)
              for name in GUIDED_FIELDS if body.get(name) is not None]
    if len(asked) > 1:
        raise bad_request("give one structured output (response_format or one structured_outputs field), "
                          f"not {len(asked)}", "structured_outputs")
    if body.get("fast_forward") is not None:  # ours (LMTP's): the session checks it
        asked.append(("fast_forward", body["fast_forward"]))
    return dict(asked)


def _response_format(value: Any) -> list[tuple[str, Any]]:
    if value is None:
        return []
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return []
    if kind == "json_object":
        return [("json_schema", {"type": "object"})]
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict | bool):
            raise bad_request("'response_format.json_schema.schema' must be a JSON schema (an object)",
                              "response_format")
        return [("json_schema", schema)]
    raise bad_request("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} "
                      "or {\"type\": \"json_schema\", \"json_schema\": {\"schema\": ...}}", "response_format")


def _structured(key: str, value: Any, param: str) -> tuple[str, Any]:
    if key not in STRUCTURED_KINDS:
        raise bad_request(f"'{param}' is not supported (supported: {', '.join(STRUCTURED_KINDS)})", param)
    if key != "choice":
        return STRUCTURED_KINDS[key], value
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise bad_request(f"'{param}' must be a non-empty list of non-empty strings", param)
    # Lark string literals take JSON's escapes
    return "grammar", "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in value)


def prompts(value: Any) -> list[str | list[int]]:
    """``prompt``: a text, token ids, or a list of either (each one prompt)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        kinds = set(map(type, value))  # one C-level pass (every request's prompt goes through here)
        if all(issubclass(kind, str) for kind in kinds):
            return list(value)
        if all(issubclass(kind, list) for kind in kinds):
            return list(value)
        if not any(issubclass(kind, str | list | dict) for kind in kinds):
            return [value]  # token ids (the session checks each)
    raise bad_request("'prompt' must be a text, a list of token ids, or a non-empty list of either", "prompt")


def messages(value: Any) -> list[dict[str, Any]]:
    """Chat messages: each a role and a text content (or OpenAI's list of text parts)."""
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a 'role'", "messages")
        checked.append({**message, "content": _content(message.get("content"), i)})
    return checked


def _content(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(text)
        return "".join(parts)
    raise bad_request(f"messages[{i}].content must be a text or a list of text parts", "messages")


def stop_strings(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request(f"'stop' must be a non-empty text or a list of at most {MAX_STOP_STRINGS}", "stop")
    return list(stops)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false", name)
    return value


def _optional_int(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {shown(json.dumps(value), 40)}", name)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{name}' must be {bounds}, got {value}", name)
    return value


def _int_list(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise bad_request(f"'{name}' must be a list of token ids", name)
    return value
