"""A prompt variable whose only constraint the server can follow, generated there in one request.

Today: a variable constrained by one ``REGEX`` alone (other leaves of the ``where`` clause on
other variables, and Python conditions, hold or fail as a whole while it is generated, so they
are checked once first). The GENERATE carries the regex (the "constraints" extension) with
``fast_forward`` off: the server masks each step exactly as ``Regex.mask`` does here (a token is
allowed where the text with it can still become a match; EOS once it is one), without a request
per mask change. Everything else keeps the client-side masks (``generation.generate``).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING

from lmql_core.query.constraints import Both, Leaf, Node, Regex, Value

if TYPE_CHECKING:
    from lmql_core.api.llm import LLM
    from lmql_core.query.generation import OnToken, Sampling, Variable


def server_regex(variable: Variable) -> str | None:
    """The regex the server could follow for ``variable`` alone, or None (client-side masks)."""
    leaves = _conjunction(variable.where) if variable.where is not None else None
    if not leaves:
        return None
    own = [leaf for leaf in leaves if isinstance(leaf, Leaf) and leaf.var == variable.name]
    if len(own) != 1 or not isinstance(own[0], Regex):
        return None
    pattern = variable.scope.eval(own[0].args[0])
    if not isinstance(pattern, str) or not pattern.isascii() or not _compiles(pattern):
        return None
    start = Value([], "", "")
    for node in leaves:  # the others do not depend on this variable's text: true or false throughout
        if node is not own[0]:
            allowed = node.allowed(variable.name, start, variable.scope, variable.vocab)
            if allowed.tokens is not None or not allowed.eos:
                return None
    return pattern


def _conjunction(node: Node) -> list[Node] | None:
    """The nodes ``and``-ed together at the top of the clause; None where an ``or`` joins them."""
    if type(node) is Both:
        parts: list[Node] = []
        for child in node.children:
            found = _conjunction(child)
            if found is None:
                return None
            parts.extend(found)
        return parts
    return None if isinstance(node, Both) else [node]  # an Either (a Both subclass) is an ``or``


def _compiles(pattern: str) -> bool:
    """Whether llguidance takes the regex (lookarounds and back-references it does not)."""
    from llguidance import LLMatcher

    return not LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))


async def generate_on_server(model: LLM, prompt_ids: list[int], variable: Variable, sampling: Sampling,
                             max_length: int, pattern: str, on_token: OnToken | None) -> list[int]:
    """The variable's tokens (without EOS), from one GENERATE carrying ``pattern``."""
    budget = max_length - len(prompt_ids)
    ids: list[int] = []
    if budget <= 0:
        return ids
    entries = model.token_stream(prompt_ids, budget, sampling.temperature, None, regex=pattern,
                                 fast_forward=False, **(sampling.options or {}))
    async with aclosing(entries) as stream:
        async for entry in stream:
            if entry["token"] == variable.vocab.eos:
                break
            ids.append(entry["token"])
            if on_token is not None:
                await on_token(ids)
    return ids
