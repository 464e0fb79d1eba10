"""The "template" extension's request rules: a GENERATE that carries a whole LMQL prompt template.

``"template": {"holes": [HOLE, ...], "texts": [TEXT, ...]}`` beside the usual ``prompt`` (the
tokens before the first hole). A HOLE is ``{"name": str, "constraints": TREE | null,
"max_length": int}`` plus its sampling (``temperature``, ``top_k``, ``top_p``,
``repetition_penalty``, ``seed``), as the client would send them for that variable; TREE is a
constraint tree in the JSON form of ``lmql_core.constraints.serial`` (a ``holds`` node refers to
an earlier hole by index); ``max_length`` bounds the prompt and the hole's tokens together
(LMQL's ``max_len``). ``texts[i]`` is the prompt text between hole i and hole i+1 (so there is one
fewer than holes). The server runs the holes one after another (``server/template.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmql_core.constraints.kinds import ConstraintError, Holds, Rule
from lmql_core.constraints.serial import from_json
from lmql_core.errors import RequestError, shown
from lmql_core.lmtp import wire
from lmql_core.lmtp.limits import Limits

TEMPLATE = "template"  # the GENERATE field, and the MODEL_INFO extension's name
VERSION = 1  # advertised as extensions["template"]
MAX_HOLES = 256
MAX_LENGTH = 1 << 24
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
HOLE_KEYS = ("name", "constraints", "max_length", *SAMPLING_KEYS)
# what a template GENERATE may not carry beside it (each hole has its own constraints and budget)
EXCLUSIVE = (*wire.CONSTRAINT_FIELDS, "logit_bias", "max_tokens", "text", "fast_forward")


@dataclass
class Hole:
    name: str
    rule: Rule | None
    max_length: int
    sampling: dict[str, Any]  # SamplingParams' fields, checked (max_tokens set when the hole starts)


@dataclass
class Template:
    holes: list[Hole]
    texts: list[str]


def template(body: dict[str, Any], vocab_size: int, limits: Limits) -> Template:
    """A GENERATE's template, checked (a ``RequestError`` naming what is wrong)."""
    given = [k for k in EXCLUSIVE if body.get(k) is not None]
    if given:
        raise RequestError(f"a template GENERATE takes no {', '.join(given)} (each hole has its own)")
    value = body[TEMPLATE]
    if not isinstance(value, dict) or set(value) != {"holes", "texts"}:
        raise RequestError("'template' must be an object with 'holes' and 'texts' (and nothing else)")
    holes, texts = value["holes"], value["texts"]
    if not isinstance(holes, list) or not 1 <= len(holes) <= MAX_HOLES:
        raise RequestError(f"'template.holes' must be a list of 1 to {MAX_HOLES} holes")
    if not isinstance(texts, list) or len(texts) != len(holes) - 1 or \
            not all(isinstance(t, str) for t in texts):
        raise RequestError(f"'template.texts' must be a list of {len(holes) - 1} strings "
                           "(the text between each hole and the next)")
    return Template([_hole(h, i, vocab_size, limits) for i, h in enumerate(holes)], list(texts))


def _hole(value: Any, index: int, vocab_size: int, limits: Limits) -> Hole:
    where = f"template hole {index}"
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be an object")
    unknown = sorted(set(value) - set(HOLE_KEYS))
    if unknown:
        raise RequestError(f"{where}: unknown key(s) {', '.join(shown(k) for k in unknown)} "
                           f"(expected {', '.join(HOLE_KEYS)})")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{where}: 'name' must be a non-empty string")
    max_length = value.get("max_length")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_LENGTH:
        raise RequestError(f"{where}: 'max_length' must be an integer between 1 and {MAX_LENGTH}")
    rule = None
    if value.get("constraints") is not None:
        try:
            rule = from_json(value["constraints"])
        except ConstraintError as e:
            raise RequestError(f"{where}: {e}") from None
        _check_references(rule, index, where)
    sampling = wire.sampling_options({k: value[k] for k in SAMPLING_KEYS if k in value}, vocab_size, limits)
    return Hole(name, rule, max_length, sampling)


def _check_references(rule: Rule, index: int, where: str) -> None:
    for node in rule.nodes():
        if isinstance(node, Holds) and node.hole >= index:
            raise RequestError(f"{where}: a 'holds' constraint refers to hole {node.hole}, "
                               "which is not an earlier hole")
