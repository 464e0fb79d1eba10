"""One choice of a completion: LMTP token entries in, OpenAI's text, log-probs and finish out.

Text comes from the model's tokenizer as the tokens arrive (``IncrementalDecoder``); stop
strings are found in it here, and text that could still become one is held back from streams.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmql_core.lmtp.wire import TokenFields, finite_logprob
from lmql_core.loading.tokenizer import IncrementalDecoder, Tokenizer

STOP, LENGTH = "stop", "length"
# each tokenizer's tokens decoded alone, as log-probs show them (asked for every token of every stream)
_PIECES: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


def pieces_of(tokenizer: Tokenizer) -> dict[int, str]:
    pieces = _PIECES.get(tokenizer)
    if pieces is None:
        pieces = _PIECES[tokenizer] = {}
    return pieces


@dataclass
class TokenLogprob:
    token: int
    text: str  # how the token is shown: decoded alone, or "token_id:N" (``tokens_as_ids``)
    logprob: float | None  # None: the prompt's first token (nothing before it to predict it)
    top: list[tuple[int, str, float]] = field(default_factory=list)  # best first, the chosen included
    length: int = 0  # characters of the token decoded alone (for text offsets)


class Choice:
    def __init__(self, index: int, tokenizer: Tokenizer, stop: list[str], stop_token_ids: list[int],
                 eos_token_id: int | None, tokens_as_ids: bool = False, logprobs: bool = True) -> None:
        """``tokens_as_ids``: log-probs name tokens "token_id:N" (vLLM's return_tokens_as_token_ids);
        ``logprobs``: whether the answer shows log-probs (else none are made)."""
        self.index = index
        self.tokens_as_ids = tokens_as_ids
        self.wants_logprobs = logprobs
        self.pieces = pieces_of(tokenizer)
        self.tokenizer = tokenizer
        self.stop = stop
        self.stop_token_ids = set(stop_token_ids)
        skip = {eos_token_id} if eos_token_id is not None else set()
        self.decoder = IncrementalDecoder(tokenizer, skip | self.stop_token_ids)
        self.prefix = ""  # echo: the prompt's text
        self.prefix_logprobs: list[TokenLogprob] = []
        self.text = ""  # the completion's text (cut at a stop string once one is found)
        self._made: list[TokenLogprob] = []  # the generated tokens' log-probs made so far (``logprobs``)
        # then the engine's events whose log-probs are not made yet: a stream writes them from the
        # events (``new_logprob_events``), without an object per token for the collector to count
        self._unmade: list[TokenFields] = []
        self.tokens = 0  # generated
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.sent_text = 0  # characters of ``prefix + text`` a stream has been given
        self.sent_logprobs = 0  # entries of ``prefix_logprobs + logprobs`` a stream has been given
        self.role_sent = False  # chat streams: the first chunk names the role
        self._checked = 0  # characters of ``text`` searched for stop strings
        self._unread: list[TokenFields] = []  # the engine's events not taken yet (``settle``)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def add(self, entry: dict[str, Any]) -> bool:
        """Take one LMTP token entry; True when a stop string or stop token ended the choice
        here (the caller cancels its stream: the engine does not know why it ended)."""
        self.settle()
        if self.done:
            return False
        if "error" in entry:
            self.error = str(entry["error"])
            return False
        top, finish = entry.get("top_logprobs"), entry.get("finish_reason")
        return self._take(entry["token"], entry["logprob"], top, finish)

    def add_event(self, event: TokenFields, finish_reason: str | None) -> bool:
        """``add`` of the engine's event (not an error) whose wire finish reason is ``finish_reason``,
        without making its LMTP entry. Tokens that can end nothing (no stop string to look for,
        not a stop token, not the last) wait, and are decoded together when their text is next
        needed (``settle``): one decode for all the tokens of a stream's event, not one per token."""
        if self.finish_reason is not None or self.error is not None:  # done
            return False
        self._unread.append(event)
        if finish_reason is None and not self.stop and event.token not in self.stop_token_ids:
            return False
        return self.settle(finish_reason)

    def settle(self, finish_reason: str | None = None) -> bool:
        """Take the events that wait (the last one ending the stream with ``finish_reason``);
        True when a stop string or stop token ended the choice."""
        events, self._unread = self._unread, []
        if not events:
            return False
        if self.stop:  # the text is searched after every token, to cut where a stop string ends
            finishes = [None] * (len(events) - 1) + [finish_reason]
            return any(self._take_event(e, f) for e, f in zip(events, finishes, strict=True))
        if self.wants_logprobs:
            self._unmade += events
        self.tokens += len(events)
        self.text += self.decoder.extend([e.token for e in events])
        return self._finish(events[-1].token, finish_reason)

    def _take_event(self, event: TokenFields, finish: str | None) -> bool:
        return False if self.done else self._take(event.token, event.logprob, _top_of(event), finish)

    def _take(self, token: int, logprob: float, top: Mapping[Any, float] | None, finish: str | None) -> bool:
        self.tokens += 1
        if self.wants_logprobs:
            self.logprobs.append(self.token_logprob(token, finite_logprob(logprob), top))
        self.text += self.decoder.push(token)
        stopped = self._finish(token, finish)
        if self.stop and self._cut_at_stop():
            self.finish_reason = STOP
            return True
        return stopped

    def _finish(self, token: int, finish: str | None) -> bool:
        """The choice's end, if ``token`` (just taken) ends it; True for a stop token."""
        if token in self.stop_token_ids:
            self.finish_reason = STOP
        elif finish is not None:
            self.finish_reason = STOP if finish == STOP else LENGTH
        if self.done:
            self.text += self.decoder.flush()
        return token in self.stop_token_ids

    def _cut_at_stop(self) -> bool:
        longest = max(map(len, self.stop))
        start = max(0, self._checked - longest + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        self._checked = len(self.text)
        if not found:
            return False
        self.text = self.text[: min(found)]
        return True

    def event_logprob(self, event: TokenFields) -> TokenLogprob:
        """``token_logprob`` of the engine's event; the usual top (the chosen token alone: no other
        candidate, or the chosen one) quickly."""
        token, top = event.token, event.top_logprobs
        if top is not None and (not top or (len(top) == 1 and token in top)):
            piece = self.pieces.get(token)
            if piece is None:
                piece = self.piece(token)
            label = f"token_id:{token}" if self.tokens_as_ids else piece
            logprob = finite_logprob(event.logprob)
            value = finite_logprob(top[token]) if top else logprob
            return TokenLogprob(token, label, logprob, [(token, label, value)], len(piece))
        return self.token_logprob(token, finite_logprob(event.logprob), _top_of(event))

    def token_logprob(self, token: int, logprob: float | None,
                      top: Mapping[Any, float] | None) -> TokenLogprob:
        """``top``: candidates by token id (an int, or LMTP's string of it)."""
        piece = self.piece(token)
        label = self._label(token, piece)
        if top and len(top) == 1:  # the usual: the chosen token alone
            ((candidate, value),) = top.items()
            if int(candidate) == token:
                return TokenLogprob(token, label, logprob, [(token, label, value)], len(piece))
        ranked = sorted(((int(t), lp) for t, lp in (top or {}).items()), key=lambda item: -item[1])
        labelled = [(t, self._label(t, self.piece(t)), lp) for t, lp in ranked]
        return TokenLogprob(token, label, logprob, labelled, len(piece))

    def piece(self, token: int) -> str:
        piece = self.pieces.get(token)
        if piece is None:
            piece = self.pieces[token] = self.tokenizer.decode([token])
        return piece

    def _label(self, token: int, piece: str) -> str:
        return f"token_id:{token}" if self.tokens_as_ids else piece

    def releasable_text(self) -> str:
        """The text a stream may be given now (after the echoed prompt, if any): all of it once
        done, else all but the characters that could begin a stop string still to come."""
        shown = len(self.prefix)
        end = shown + len(self.text)
        if self.stop and not self.done:
            end = max(self.sent_text, shown, end - max(map(len, self.stop)) + 1)
        start, self.sent_text = self.sent_text, max(self.sent_text, end)
        if start >= end:
            return ""
        head = self.prefix[start:] if start < shown else ""
        return head + self.text[max(0, start - shown) : end - shown]

    @property
    def logprobs(self) -> list[TokenLogprob]:
        """The generated tokens' log-probs (those of events taken whole made now)."""
        if self._unmade:
            self._made += [self.event_logprob(e) for e in self._unmade]
            self._unmade = []
        return self._made

    def logprobs_unsent(self) -> bool:
        """Whether a stream has log-probs still to be given (``new_logprobs``)."""
        return self.sent_logprobs < len(self.prefix_logprobs) + len(self._made) + len(self._unmade)

    def new_logprobs(self) -> list[TokenLogprob]:
        """The log-probs a stream has not been given yet (the echoed prompt's first)."""
        shown = len(self.prefix_logprobs)
        start = self.sent_logprobs
        new = self.prefix_logprobs[start:] + self.logprobs[max(0, start - shown) :]
        self.sent_logprobs = shown + len(self._made)
        return new

    def new_logprob_events(self) -> list[TokenFields] | None:
        """``new_logprobs`` as the engine's events they are made from, when all of them are still
        events (a stream of generated tokens, the usual); None: some are made already (take
        ``new_logprobs``)."""
        made = len(self.prefix_logprobs) + len(self._made)
        if self.sent_logprobs < made:
            return None
        new = self._unmade[self.sent_logprobs - made :]
        self.sent_logprobs = made + len(self._unmade)
        return new


def _top_of(event: TokenFields) -> dict[Any, float] | None:
    """An event's candidates as LMTP's entry has them: the chosen token first, the candidates'
    values winning."""
    top = event.top_logprobs
    if top is None:
        return None
    return {event.token: finite_logprob(event.logprob), **{t: finite_logprob(lp) for t, lp in top.items()}}


# --- OpenAI's shapes ---------------------------------------------------------------------


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The ``logprobs`` of a /v1/completions choice; ``offset``: where the first token's text
    begins in the choice's text."""
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += item.length
    return {
        "tokens": [item.text for item in items],
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [None if item.logprob is None else {text: lp for _, text, lp in item.top} or
                         {item.text: item.logprob} for item in items],
        "text_offset": offsets,
    }


def chat_logprobs(items: list[TokenLogprob], top: int) -> dict[str, Any]:
    """The ``logprobs`` of a chat choice: ``content``, one entry per token with its ``top``
    alternatives."""
    return {"content": [{**_chat_token(item.text, item.logprob),
                         "top_logprobs": [_chat_token(text, lp) for _, text, lp in item.top[:top]]}
                        for item in items]}


def _chat_token(text: str, logprob: float | None) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
