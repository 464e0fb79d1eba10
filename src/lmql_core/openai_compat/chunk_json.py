"""OpenAI's JSON for streamed chunks and their log-probs, written directly: every generated token
of every stream goes through here, and the generic encoder costs the event loop more than the
rest of a chunk's making. Each function writes what ``json.dumps`` (compact) writes of the same
object, character for character."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from lmql_core.lmtp.wire import TokenFields, finite_logprob
from lmql_core.openai_compat.choices import Choice, TokenLogprob

_JSON = json.JSONEncoder(separators=(",", ":"))
_string = json.encoder.encode_basestring_ascii
COMPLETION_DELTA_KEYS = ("index", "text", "logprobs", "finish_reason")
COMPLETION_LOGPROBS_KEYS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def delta_json(delta: dict[str, Any]) -> str:
    """``json.dumps(delta)`` (compact), character for character; a /v1/completions delta (every
    generated token of every stream goes through here) written directly: the generic encoder
    costs the event loop more than the rest of the chunk's making."""
    logprobs = delta.get("logprobs")
    if (tuple(delta) != COMPLETION_DELTA_KEYS or type(delta["index"]) is not int
            or not (logprobs is None or tuple(logprobs) == COMPLETION_LOGPROBS_KEYS)):
        return _JSON.encode(delta)  # chat's, and any other shape
    finish = delta["finish_reason"]
    return (f'{{"index":{delta["index"]},"text":{_string(delta["text"])},"logprobs":'
            f'{"null" if logprobs is None else _logprobs_json(logprobs)},'
            f'"finish_reason":{"null" if finish is None else _string(finish)}}}')


def completion_delta_json(index: int, text: str, logprobs_json: str | None, finish: str | None) -> str:
    """``delta_json`` of a /v1/completions delta whose log-probs are written already (or None)."""
    return (f'{{"index":{index},"text":{_string(text)},"logprobs":{logprobs_json or "null"},'
            f'"finish_reason":{"null" if finish is None else _string(finish)}}}')


def completion_logprobs_json(items: list[TokenLogprob], offset: int) -> str:
    """``delta_json`` of ``completion_logprobs(items, offset)``, written from the entries directly
    (a stream's every token goes through here): a token's label is escaped once per process, and
    the usual candidates (the chosen token alone) need no dictionary."""
    parts: _LogprobParts = ([], [], [], [])
    for item in items:
        _add_item(parts, item, offset)
        offset += item.length
    return _logprobs_object(parts)


def events_logprobs_json(choice: Choice, events: Sequence[TokenFields], offset: int) -> tuple[str, int]:
    """``completion_logprobs_json`` of the log-probs of ``events`` (``Choice.new_logprob_events``)
    and the text offset after them, written from the events: the usual token (no candidate beside
    the chosen one) makes no ``TokenLogprob`` (three objects a token for the collector to count)."""
    parts: _LogprobParts = ([], [], [], [])
    tokens, values, tops, offsets = parts
    pieces, strings, as_ids = choice.pieces, _JSON_STRINGS, choice.tokens_as_ids
    for event in events:
        token, top = event.token, event.top_logprobs
        if top is None or (top and (len(top) != 1 or token not in top)):  # other candidates
            item = choice.event_logprob(event)
            _add_item(parts, item, offset)
            offset += item.length
            continue
        piece = pieces.get(token)
        if piece is None:
            piece = choice.piece(token)
        text = f"token_id:{token}" if as_ids else piece
        label = strings.get(text) or _json_string(text)
        value = _number_fast(finite_logprob(event.logprob))
        tokens.append(label)
        values.append(value)
        tops.append(f"{{{label}:{_number_fast(finite_logprob(top[token])) if top else value}}}")
        offsets.append(str(offset))
        offset += len(piece)
    return _logprobs_object(parts), offset


_LogprobParts = tuple[list[str], list[str], list[str], list[str]]  # tokens, values, tops, offsets (JSON)


def _add_item(parts: _LogprobParts, item: TokenLogprob, offset: int) -> None:
    tokens, values, tops, offsets = parts
    text, lp, top = item.text, item.logprob, item.top
    label = _JSON_STRINGS.get(text) or _json_string(text)
    value = _number_fast(lp)
    tokens.append(label)
    values.append(value)
    if lp is None:
        tops.append("null")
    elif len(top) == 1:  # the usual: the chosen token alone, its label and often its value the same
        _, top_text, top_lp = top[0]
        top_label = label if top_text is text else _json_string(top_text)
        tops.append(f"{{{top_label}:{value if top_lp is lp else _number_fast(top_lp)}}}")
    elif not top:
        tops.append(f"{{{label}:{value}}}")
    else:  # several candidates: as the dictionary has them (one entry per text)
        tops.append(_top_json({t: v for _, t, v in top}))
    offsets.append(str(offset))


def _logprobs_object(parts: _LogprobParts) -> str:
    tokens, values, tops, offsets = parts
    return (f'{{"tokens":[{",".join(tokens)}],"token_logprobs":[{",".join(values)}],'
            f'"top_logprobs":[{",".join(tops)}],"text_offset":[{",".join(offsets)}]}}')


_JSON_STRINGS: dict[str, str] = {}  # labels as JSON strings (tokens' texts: bounded by the vocabularies)
_JSON_STRINGS_MAX = 1 << 18


def _json_string(text: str) -> str:
    encoded = _JSON_STRINGS.get(text)
    if encoded is None:
        if len(_JSON_STRINGS) >= _JSON_STRINGS_MAX:
            _JSON_STRINGS.clear()
        encoded = _JSON_STRINGS[text] = _string(text)
    return encoded


def _number_fast(value: float | None) -> str:
    """``_number``; a finite float (the usual) at once (``value - value`` is NaN for inf and NaN)."""
    return float.__repr__(value) if type(value) is float and value - value == 0 else _number(value)


def _logprobs_json(logprobs: dict[str, Any]) -> str:
    tops = ",".join([_top_json(top) for top in logprobs["top_logprobs"]])
    return (f'{{"tokens":[{",".join(map(_string, logprobs["tokens"]))}],'
            f'"token_logprobs":[{_numbers(logprobs["token_logprobs"])}],'
            f'"top_logprobs":[{tops}],"text_offset":[{",".join(map(str, logprobs["text_offset"]))}]}}')


def _top_json(top: dict[str, float] | None) -> str:
    if top is None:
        return "null"
    return "{" + ",".join([f"{_string(text)}:{_number(lp)}" for text, lp in top.items()]) + "}"


def _numbers(values: list[float | None]) -> str:
    """``_number`` of each, comma-separated; finite floats (the usual) at once."""
    try:
        if math.isfinite(sum(values)):  # type: ignore[arg-type]  # a None: TypeError, one by one
            return ",".join(map(float.__repr__, values))
    except TypeError:
        pass
    return ",".join(map(_number, values))


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    if math.isfinite(value):
        return float.__repr__(value) if type(value) is float else _JSON.encode(value)
    return _JSON.encode(value)  # Infinity, as json writes it
