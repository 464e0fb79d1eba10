"""The LMQL programs the template tests run on the server and on the client path, and how."""

from __future__ import annotations

from typing import Any

import lmql

MODEL = "lmql-tiny"

PROGRAMS = {
    "int": ('"Q: How old is the tower?\\nA: [N] years"', "INT(N)"),
    "stops_at": ('"A list of fruits:\\n-[X]\\n-[Y]"', 'STOPS_AT(X, "\\n") and STOPS_AT(Y, "\\n") '
                                                      'and len(TOKENS(X)) < 12 and len(TOKENS(Y)) < 12'),
    "stops_before": ('"Say something: [X] more"', 'STOPS_BEFORE(X, " ") and len(TOKENS(X)) < 10'),
    "len_chars": ('"Describe the sea: [X]"', "len(X) < 14"),
    "len_tokens": ('"Once upon a time[X]"', "len(TOKENS(X)) < 6"),
    "regex": ('"The date is [D]"', r'REGEX(D, r"[0-9]{2}/[0-9]{2}/[0-9]{4}")'),
    "in": ('"The best animal is the [A]."', 'A in ["cat", "dog", "catfish", "horse"]'),
    "equals": ('"Say yes: [A]"', 'A == "yes"'),
    "and_or": ('"Pick: [A]"', '(A in ["red", "green"] or len(TOKENS(A)) < 3) and not "x" in A'),
    "four_variables": ('"Name:[NAME]\\nAge:[AGE]\\nColor:[COLOR]\\nMotto:[MOTTO]"',
                       'STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 6 and INT(AGE) and '
                       'COLOR in [" red", " blue", " green"] and len(MOTTO) < 20 and '
                       'STOPS_AT(MOTTO, ".") and len(TOKENS(AGE)) < 4'),
    "typed_regex_and_int": ('"The code is [C: r\'[A-Z][0-9]{3}\'] and the count [N: int]"', "len(TOKENS(C)) < 10"),
    "later_hole_sees_earlier": ('"First:[A] Second:[B]"',
                                'len(TOKENS(A)) < 4 and (len(A) > 100 or B in [" x", " y"]) '
                                'and len(TOKENS(B)) < 4'),
    # a later hole whose first mask is slow (a REGEX state no earlier test computed): the engine
    # thread does not start it, the event loop does (after computing it on a thread)
    "later_slow_regex": ('"Word:[A] Code:[C]"', 'len(TOKENS(A)) < 3 and REGEX(C, r"[a-f]{2}-[0-9]{2}q")'),
}


def program(prompt: str, where: str) -> str:
    return f"argmax\n    {prompt}\nwhere\n    {where}\n"


def run(source: str, model: Any) -> tuple[dict[str, Any], str, int]:
    before = model.requests
    result = lmql.run_sync(source, model=model)
    return result.variables, result.prompt, model.requests - before
