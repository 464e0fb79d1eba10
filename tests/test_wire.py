"""The wire form of TOKEN entries: written directly for the websocket, as dictionaries in-process."""

from __future__ import annotations

import json
import math

import pytest

from lmql_core.engine.sequence import Finish, TokenEvent
from lmql_core.lmtp import wire
from lmql_core.lmtp.server.session import FINISH_REASONS

EVENTS = [
    TokenEvent(7, 42, -0.123456789012, None, {42: -0.123456789012}),  # the usual: greedy, one top
    TokenEvent(0, 3, -1.5, Finish.EOS, {3: -1.5, 9: -2.25, 11: -7.0}),  # more than one, chosen first
    TokenEvent(1, 9, -2.25, Finish.LENGTH, {3: -1.5, 9: -2.25}),  # sampled: chosen not the best
    TokenEvent(2, 5, -0.75, None, {1: -0.5}),  # top list without the chosen token
    TokenEvent(3, 8, 0.0, None, {}),  # no top log-probs asked
    TokenEvent(9, 5, -0.75, None, {5: -0.5, 6: -0.9}),  # the top list's value for the chosen one wins
    TokenEvent(4, 8, -math.inf, None, {8: -math.inf, 2: math.nan}),  # strict JSON has no inf
    TokenEvent(5, 17, -3.0, Finish.SCORED, None),  # a scored token
    TokenEvent(6, 1, 1e-300, None, {1: 1e-300}),  # exponent forms
    TokenEvent("a \"quoted\" id ü", 4, -1.0, None, {4: -1.0}),  # string ids take the generic path
    TokenEvent(8, error="model error: \"boom\"\n"),
    TokenEvent(None, error="bad frame"),
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_direct_token_json_equals_the_generic_encoding(event: TokenEvent) -> None:
    expected = json.dumps([wire.token_entry(event, FINISH_REASONS)], separators=(",", ":"))
    assert wire.token_entries_json([event], FINISH_REASONS) == expected
    json.loads(expected, parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_a_template_entry_is_the_plain_one_with_its_hole(event: TokenEvent) -> None:
    plain = wire.token_entry(event, FINISH_REASONS)
    expected = plain if event.error is not None else {**plain, "hole": 3}  # an error stays as it is
    assert wire.tagged_entry(event, FINISH_REASONS, 3) == expected
    written = wire.token_entries_json([event], FINISH_REASONS, [3])
    assert written == json.dumps([expected], separators=(",", ":"))


def test_a_whole_step_encodes_as_one_frame() -> None:
    frame = wire.encode_frame("TOKEN", wire.token_entries_json(EVENTS, FINISH_REASONS))
    assert frame == "TOKEN " + json.dumps([wire.token_entry(e, FINISH_REASONS) for e in EVENTS], separators=(",", ":"))
    assert wire.parse_frame(frame)[1][0] == wire.token_entry(EVENTS[0], FINISH_REASONS)
