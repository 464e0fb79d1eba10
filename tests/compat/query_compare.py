"""How ``run_compat.py`` judges each LMQL program of ``queries.py``: equal results, or a shape.

Greedy and beam programs must give identical prompts and variables on both runtimes (scores
within the comparison's tolerance). Sampled ones are checked for their shape on each side: a
list of ``n`` results whose variables have the declared type, stay under their token bound and
take only allowed values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from queries import PROGRAMS

Shape = Callable[[Any], bool]
CountTokens = Callable[[str], int]


def value_fits(value: Any, spec: dict[str, Any], count_tokens: CountTokens) -> bool:
    kind = {"str": str, "int": int}[spec.get("type", "str")]
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    if "max_tokens" in spec and count_tokens(str(value)) >= spec["max_tokens"]:
        return False
    return "in" not in spec or value in spec["in"]


def sampled_shape(shape: dict[str, Any], count_tokens: CountTokens) -> Shape:
    """A check of one side's result against a program's ``shape``."""

    def check(result: Any) -> bool:
        if not isinstance(result, list) or len(result) != shape["n"]:
            return False
        for one in result:
            variables = one.get("variables") if isinstance(one, dict) else None
            if not isinstance(variables, dict):
                return False
            if not all(value_fits(variables.get(name), spec, count_tokens) for name, spec in shape["vars"].items()):
                return False
        return True

    return check


def token_counter(folder: str) -> CountTokens:
    """The fewest vocabulary tokens that spell a text: a lower bound on the tokens any run
    generated for it (re-encoding the text would over-count a non-canonical split, e.g. " were"
    "n't" generated, " w" "er" "en" "'t" encoded), so a value over its bound by this count
    certainly broke the bound."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    pieces = {tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(len(tokenizer))}
    pieces.discard("")
    longest = max(len(p) for p in pieces)

    def fewest(text: str) -> int:
        best = [0] + [len(text) + 1] * len(text)  # best[i]: fewest tokens spelling text[:i]
        for end in range(1, len(text) + 1):
            for start in range(max(0, end - longest), end):
                if text[start:end] in pieces:
                    best[end] = min(best[end], best[start] + 1)
        return best[-1]

    return fewest


def expectations(folder: str) -> dict[str, tuple[Shape | None, bool]]:
    """Per program: (shape check or None, whether both sides must be equal)."""
    count_tokens = token_counter(folder)
    expected: dict[str, tuple[Shape | None, bool]] = {}
    for program in PROGRAMS:
        if program["kind"] == "sampled":
            expected[program["name"]] = (sampled_shape(program["shape"], count_tokens), False)
        else:
            expected[program["name"]] = (None, True)
    return expected
