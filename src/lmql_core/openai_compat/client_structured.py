"""Structured outputs over the ``openai:`` transport: LMTP's ``regex``, ``grammar`` and
``json_schema`` GENERATE fields, sent in whichever form the server honours.

vLLM (and our server's OpenAI endpoint) take ``structured_outputs`` (``regex``, ``grammar``,
``json``); older vLLM the ``guided_*`` fields; OpenAI-style servers ``response_format`` with a
JSON schema. Servers that know none of them mostly ignore the field (llama-cpp-python does), so
each kind is probed once by asking for a text no model would write unasked and checking the
answer: a form that is refused or ignored does not count. A grammar is LMTP's, llguidance's
Lark-like syntax with token-id literals (``<[N]>``, what the query runtime's ``in`` lists use),
so a server counts as following grammars only where such a grammar is obeyed.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmql_core.errors import LMQLError
from lmql_core.lmtp import wire
from lmql_core.openai_compat.client_features import HTTPStatusError, Post, ServerFeatureWarning

Form = Callable[[Any], dict[str, Any]]
# each LMTP constraint field's forms in a completion body, in the order tried
FORMS: dict[str, dict[str, Form]] = {
    "regex": {"structured_outputs": lambda v: {"structured_outputs": {"regex": v}},
              "guided_regex": lambda v: {"guided_regex": v}},
    "grammar": {"structured_outputs": lambda v: {"structured_outputs": {"grammar": v}},
                "guided_grammar": lambda v: {"guided_grammar": v}},
    "json_schema": {"structured_outputs": lambda v: {"structured_outputs": {"json": v}},
                    "guided_json": lambda v: {"guided_json": v},
                    "response_format": lambda v: {"response_format": {
                        "type": "json_schema", "json_schema": {"name": "output", "schema": v}}}},
}
PROBE_PROMPT = "Hello"
PROBE_REGEX = r"Zq(x|y)7"  # a text no model writes unasked
PROBE_WORD = "Zqx7"
# with a token-id literal (of a token every vocabulary has; its text is not known here: MODEL_INFO,
# which the probe answers, comes before the tokenizer)
PROBE_SCHEMA = {"type": "string", "enum": [PROBE_WORD]}
PROBE_GRAMMAR = 'start: "Zq" ("x" | "y") "7" <[100]>'
PROBE_TOKENS = 16


@dataclass
class StructuredOutputs:
    """How the server takes each constraint field (the form's name), where it follows it at all."""

    forms: dict[str, str] = field(default_factory=dict)

    def follows(self) -> list[str]:
        return [kind for kind in wire.CONSTRAINT_FIELDS if kind in self.forms]

    def body_fields(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The completion body's fields for a GENERATE's constraint (``{}`` without one); a
        constraint the server does not follow is an error, never unconstrained output."""
        asked = wire.constraint(payload)
        if asked is None:
            return {}
        kind, value = asked
        form = self.forms.get(kind)
        if form is None:
            raise LMQLError(f"this server does not follow {kind} constraints (it ignores or refuses "
                            "vLLM's structured_outputs and guided_* fields and response_format)")
        fields = FORMS[kind][form](value)
        if payload.get("fast_forward") is not None:  # ours honours it; vLLM ignores unknown fields
            fields["fast_forward"] = wire.fast_forward(payload)
        return fields


async def probe_structured(post: Post, base_url: str, model: str) -> StructuredOutputs:
    """Which form of each constraint the server obeys (one request per form tried, once per
    model); what it lacks is said once, as a warning saying what happens instead."""
    found = StructuredOutputs()
    checks: dict[str, tuple[Any, Callable[[str], bool]]] = {
        "regex": (PROBE_REGEX, lambda text: re.fullmatch(PROBE_REGEX, text) is not None),
        "grammar": (PROBE_GRAMMAR, lambda text: re.fullmatch(PROBE_REGEX + ".+", text, re.S) is not None),
        "json_schema": (PROBE_SCHEMA, lambda text: _json_value(text) == PROBE_WORD),
    }
    for kind, (value, obeyed) in checks.items():
        for name, form in FORMS[kind].items():
            body = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": PROBE_TOKENS, "temperature": 0,
                    **form(value)}
            try:
                answer = await post("/completions", body)
            except HTTPStatusError:
                continue
            choices = answer.get("choices") or [{}]
            if obeyed(str(choices[0].get("text") or "")):
                found.forms[kind] = name
                break
    lacking = [kind for kind in wire.CONSTRAINT_FIELDS if kind not in found.forms]
    if lacking:
        warnings.warn(f"the OpenAI-compatible server at {base_url} ({model!r}) does not follow "
                      f"{', '.join(lacking)} constraints (structured_outputs, guided_* and response_format "
                      "are ignored or refused): generate() with them is an error, and LMQL constraints "
                      "are masked on the client instead", ServerFeatureWarning, stacklevel=2)
    return found


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
