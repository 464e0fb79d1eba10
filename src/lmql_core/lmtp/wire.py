"""LMTP on the wire: frames, the rules for requests, and the wire form of tokens.

A frame is text: ``<COMMAND> <json>``. Every rule about what a request may contain is here,
so the server and the in-process transport reject exactly the same things. This module knows
nothing of the engine: it reads plain values, and writes token entries from any object with a
token event's fields (``TokenFields``), given the wire name of each finish reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from lmql_core.errors import RequestError, shown
from lmql_core.lmtp.limits import Limits

# Commands beyond LMQL 0.7, each advertised in MODEL_INFO's ``model_info.extensions``.
TOKENIZER = "TOKENIZER"  # the served model's tokenizer
CANCEL = "CANCEL"  # stop a stream and free it; no answer (unknown and finished ids are ignored)
CHAT = "CHAT"  # the prompt a model's chat template makes of "messages" (MSG "chat_prompt")
# an OpenAI front-end process's connection (serving/frontends.py): the header with its secret,
# and its frames for the metrics (HTTP requests since the last one, requests in flight now)
FRONTEND_HEADER = "X-LMQL-Frontend"
TRAFFIC = "TRAFFIC"

# GENERATE fields beyond LMQL 0.7 (the "constraints" extension in MODEL_INFO lists those served):
# the output must match a regex, a grammar (Lark-like, llguidance's syntax) or a JSON schema
CONSTRAINT_FIELDS = ("regex", "grammar", "json_schema")

# finish reasons on the wire
STOP = "stop"  # EOS, or the last scored token
LENGTH = "length"  # max_tokens reached, or the context is full


def parse_frame(text: str) -> tuple[str, Any]:
    command, _, body = text.partition(" ")
    if not command or not command.isupper():
        raise RequestError("a frame must be '<COMMAND> <json>', e.g. 'GENERATE {...}'")
    try:
        payload = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError) as e:
        raise RequestError(f"the body of {shown(command)} is not valid JSON: {shown(e, 200)}") from None
    return command, payload


class Encoded(str):
    """A payload already in its JSON form (see ``token_entries_json``)."""


def encode_frame(command: str, payload: Any) -> str:
    if isinstance(payload, Encoded):
        return f"{command} {payload}"
    return f"{command} {json.dumps(payload, separators=(',', ':'))}"


def require_object(payload: Any, command: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RequestError(f"the body of {shown(command)} must be a JSON object")
    return payload


def stream_id_of(payload: dict[str, Any]) -> int | str:
    sid = payload.get("stream_id")
    if isinstance(sid, bool) or not isinstance(sid, int | str):
        raise RequestError("'stream_id' must be an integer or a string")
    return sid


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {json.dumps(value)[:40]}")
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def token_list(value: Any, name: str, vocab_size: int, allow_empty: bool = False) -> list[int]:
    if not isinstance(value, list):
        raise RequestError(f"'{name}' must be a list of token ids")
    if not value:
        if not allow_empty:
            raise RequestError(f"'{name}' must not be empty")
        return value
    # the common case in C-level passes (a 272-token prompt: ~8x faster than the loop below,
    # which the event loop ran for every token of every request); ``type is int`` refuses bools
    if set(map(type, value)) == {int} and min(value) >= 0 and max(value) < vocab_size:
        return value
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise RequestError(f"'{name}' holds {json.dumps(t)[:40]}, not a token id in [0, {vocab_size})")
    return value


# Text mode: a text longer than the context times this cannot fit (tokens this long are rare even
# in code vocabularies), so it is refused before tokenizing, which holds the event loop (and the
# interpreter's lock: measured, ~1.8 s per million characters for lmql-tiny's tokenizer).
MAX_CHARS_PER_TOKEN = 64


def text(body: dict[str, Any], field: str, max_context: int | None) -> str:
    """A text-mode field: a non-empty string of valid Unicode that could fit the context."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise RequestError(f"'{field}' must be a non-empty string")
    if max_context is not None and len(value) > max_context * MAX_CHARS_PER_TOKEN:
        raise RequestError(f"'{field}' has {len(value)} characters; this model's context holds {max_context} "
                           f"tokens, so at most {max_context * MAX_CHARS_PER_TOKEN} characters are accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"'{field}' is not valid Unicode: it holds a lone surrogate "
                           f"({shown(ascii(e.object[e.start:e.end]))}) at character {e.start}") from None
    return value


def logit_bias(value: Any, vocab_size: int, limits: Limits) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError("'logit_bias' must be an object mapping token ids to numbers")
    if len(value) > limits.max_logit_bias_entries:
        raise RequestError(f"'logit_bias' has more than {limits.max_logit_bias_entries} entries")
    bias: dict[int, float] = {}
    for key, b in value.items():
        if not (key.isascii() and key.isdigit()):  # int() would take " 7 ", "1_0" and Arabic digits
            raise RequestError(f"'logit_bias' key {shown(repr(key), 40)} is not a token id")
        token = int(key) if len(key) <= 18 else vocab_size  # int() refuses 4,300 digits and more
        if not 0 <= token < vocab_size:
            raise RequestError(f"'logit_bias' key {shown(key, 40)} is outside the vocabulary "
                               f"[0, {vocab_size})")
        if isinstance(b, bool) or not isinstance(b, int | float) or math.isnan(b):
            raise RequestError(f"'logit_bias' value for {token} must be a number")
        bias[token] = float(b)
    return bias


def temperature(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError("'temperature' must be a finite number")
    if value < 0:
        raise RequestError(f"'temperature' must not be negative, got {value}")
    return float(value)


# Decoding options LMQL 0.7 clients forward from lmql.model(...) that this engine does not apply
# yet: refusing them beats decoding differently from what the program asked for.
UNSUPPORTED_OPTIONS = ("presence_penalty", "frequency_penalty", "length_penalty")


def sampling_options(payload: dict[str, Any], vocab_size: int, limits: Limits) -> dict[str, Any]:
    """A GENERATE request's decoding options, checked: max_tokens, temperature, logit_bias,
    top_logprobs, top_k, top_p, repetition_penalty, seed (an extension: the stream's own noise)."""
    for option in UNSUPPORTED_OPTIONS:
        if payload.get(option) is not None:
            raise RequestError(f"'{option}' is not supported by this server (yet); leave it out")
    max_tokens = payload.get("max_tokens")
    return dict(
        max_tokens=limits.default_max_tokens if max_tokens is None
        else _int(max_tokens, "max_tokens", 1, limits.max_tokens),
        temperature=temperature(payload.get("temperature")),
        logit_bias=logit_bias(payload.get("logit_bias"), vocab_size, limits),
        top_logprobs=_int(payload.get("top_logprobs") or 0, "top_logprobs", 0, limits.max_top_logprobs),
        top_k=_int(payload.get("top_k") or 0, "top_k", 0, vocab_size),
        top_p=_number(payload.get("top_p"), "top_p", 1.0, low=0.0, high=1.0, open_low=True),
        repetition_penalty=_number(payload.get("repetition_penalty"), "repetition_penalty", 1.0, low=0.0,
                                   high=1e6, open_low=True),
        seed=None if payload.get("seed") is None else _int(payload["seed"], "seed", 0, MAX_SEED),
    )


def constraint(payload: dict[str, Any]) -> tuple[str, Any] | None:
    """A GENERATE's constraint: (field, value), or None; at most one field may be given."""
    given = [name for name in CONSTRAINT_FIELDS if payload.get(name) is not None]
    if len(given) > 1:
        raise RequestError(f"give at most one of {', '.join(CONSTRAINT_FIELDS)}; got {', '.join(given)}")
    return (given[0], payload[given[0]]) if given else None


def fast_forward(payload: dict[str, Any]) -> bool:
    """A constrained GENERATE's ``fast_forward`` (default true): whether text the constraint
    forces is appended without sampling (as its canonical tokens)."""
    value = payload.get("fast_forward")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise RequestError("'fast_forward' must be true or false")
    return value


def _number(value: Any, name: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a finite number")
    if value > high or value < low or (open_low and value == low):
        bound = f"({low}" if open_low else f"[{low}"
        raise RequestError(f"'{name}' must be in {bound}, {high}], got {value}")
    return float(value)


MAX_SEED = (1 << 63) - 1
LOWEST_LOGPROB = -1e30  # stands in for -inf, which strict JSON cannot carry


def _finite(value: float) -> float:
    return value if math.isfinite(value) else LOWEST_LOGPROB


finite_logprob = _finite  # a log-prob as the wire carries it (-inf as LOWEST_LOGPROB)


class TokenFields(Protocol):
    """What a token entry is written from (the engine's ``TokenEvent`` has these fields)."""

    stream_id: Any
    token: int
    logprob: float
    finish_reason: Any  # a key of the ``reasons`` mapping given with it
    top_logprobs: Mapping[int, float] | None
    error: str | None


Reasons = Mapping[Any, str | None]  # an event's finish_reason -> its wire name (STOP, LENGTH, None)


def token_entry(event: TokenFields, reasons: Reasons) -> dict[str, Any]:
    """The wire form of an event. LMQL 0.7 clients need ``top_logprobs`` on every generated
    token, holding at least the chosen one; scored tokens carry none."""
    if event.error is not None:
        return {"stream_id": event.stream_id, "error": event.error}
    entry = {
        "token": event.token,
        "stream_id": event.stream_id,
        "logprob": _finite(event.logprob),
        "finish_reason": reasons[event.finish_reason],
    }
    if event.top_logprobs is not None:
        top = {str(event.token): entry["logprob"]}
        top.update((str(t), _finite(lp)) for t, lp in event.top_logprobs.items())
        entry["top_logprobs"] = top
    return entry


def token_entries_json(events: Sequence[TokenFields | dict[str, Any]], reasons: Reasons,
                       holes: Sequence[int] | None = None) -> Encoded:
    """``json.dumps([token_entry(e, reasons) for e in events])`` (compact), character for
    character, but written directly: the event loop encodes every generated token of every
    stream, and the dictionaries plus the generic encoder cost it three times as much.
    ``holes``: each event's template hole, added as ``"hole"`` (``tagged_entry``); an entry
    already made (a dict: a template hole's end) is written as it is."""
    if holes is None:
        return Encoded(f"[{','.join([_entry_json(e, reasons) for e in events])}]")  # type: ignore[arg-type]
    entries = [json.dumps(e, separators=(",", ":")) if isinstance(e, dict) else _entry_json(e, reasons, h)
               for e, h in zip(events, holes, strict=True)]
    return Encoded(f"[{','.join(entries)}]")


def tagged_entry(event: TokenFields, reasons: Reasons, hole: int) -> dict[str, Any]:
    """A template stream's entry (``lmtp/template.py``): the event's, with its hole's index (an
    error's entry as it is)."""
    entry = token_entry(event, reasons)
    if event.error is None:
        entry["hole"] = hole
    return entry


def _entry_json(event: TokenFields, reasons: Reasons, hole: int | None = None) -> str:
    token, top, reason, sid = event.token, event.top_logprobs, reasons[event.finish_reason], event.stream_id
    if event.error is not None or reason not in (None, STOP, LENGTH) or type(sid) is not int:
        # the rare shapes
        entry = token_entry(event, reasons) if hole is None else tagged_entry(event, reasons, hole)
        return json.dumps(entry, separators=(",", ":"))
    logprob = _number_json(event.logprob)
    head = f'{{"token":{token},"stream_id":{sid},"logprob":{logprob},"finish_reason":'
    head += "null" if reason is None else f'"{reason}"'
    tail = "}" if hole is None else f',"hole":{hole}}}'
    if top is None:
        return head + tail
    chosen = _number_json(top[token]) if token in top else logprob
    rest = "" if not top or (len(top) == 1 and token in top) else "".join(
        [f',"{t}":{_number_json(lp)}' for t, lp in top.items() if t != token])
    return f'{head},"top_logprobs":{{"{token}":{chosen}{rest}}}{tail}'


def _number_json(value: float) -> str:
    return repr(value) if math.isfinite(value) else "-1e+30"  # json.dumps(LOWEST_LOGPROB)
