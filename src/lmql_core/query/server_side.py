"""A prompt variable whose only constraint the server can follow, generated there in one request.

Used where a whole statement cannot go to the server as a template (``template_run.py``: e.g. a
Python condition elsewhere in the clause): a variable constrained by one ``V in [...]`` alone
(ASCII options; other leaves of the ``where`` clause on other variables, and Python conditions,
hold or fail as a whole while it is generated: ``Rule.server_grammar``). The GENERATE carries a
grammar over token ids (``choice_grammar``, the "constraints" extension) with ``fast_forward``
off, so the server masks each step exactly as ``OneOf.mask`` does here, without a request per
mask change. A REGEX has no such grammar (``kinds.Regex``: llguidance's masks differ from
LMQL's). Everything else keeps the client-side masks (``generation.generate``).
"""

from __future__ import annotations

import os
from contextlib import aclosing
from typing import Any

from lmql_core.api.llm import LLM
from lmql_core.constraints.grammar import MAX_CHOICE_STATES, choice_grammar
from lmql_core.query.variable import OnToken, Sampling, Variable

__all__ = ["MAX_CHOICE_STATES", "SWITCH", "choice_grammar", "generate_on_server", "server_constraint",
           "server_constraints_enabled"]

SWITCH = "LMQL_SERVER_CONSTRAINTS"  # "off": every constraint is enforced by the client (LMQL 0.7.3's way)


def server_constraints_enabled() -> bool:
    """Whether constraints may go to the server (a variable's grammar, a statement's template)."""
    return os.environ.get(SWITCH, "on").strip().lower() not in ("off", "0", "false", "no")


def server_constraint(variable: Variable) -> tuple[str, str] | None:
    """The GENERATE field (``regex`` or ``grammar``) and value the server could follow for
    ``variable`` alone, or None (client-side masks): the kinds say (``Rule.server_grammar``)."""
    rule = variable.rule
    return None if rule is None else rule.server_grammar(variable.vocab)


async def generate_on_server(model: LLM, prompt_ids: list[int], variable: Variable, sampling: Sampling,
                             max_length: int, constraint: tuple[str, str],
                             on_token: OnToken | None) -> list[int]:
    """The variable's tokens (without EOS), from one GENERATE carrying ``constraint``."""
    budget = max_length - len(prompt_ids)
    ids: list[int] = []
    if budget <= 0:
        return ids
    field, value = constraint
    options: dict[str, Any] = {field: value, "fast_forward": False, **(sampling.options or {})}
    entries = model.token_stream(prompt_ids, budget, sampling.temperature, None, **options)
    async with aclosing(entries) as stream:
        async for entry in stream:
            if entry["token"] == variable.vocab.eos:
                break
            ids.append(entry["token"])
            if on_token is not None:
                await on_token(ids)
    return ids
