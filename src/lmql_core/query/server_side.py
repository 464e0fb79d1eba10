"""A prompt variable whose only constraint the server can follow, generated there in one request.

Today: a variable constrained by one ``REGEX`` or one ``V in [...]`` alone (ASCII text; other
leaves of the ``where`` clause on other variables, and Python conditions, hold or fail as a whole
while it is generated, so they are checked once first). The GENERATE carries a regex or grammar
(the "constraints" extension) with ``fast_forward`` off, so the server masks each step exactly
as ``Regex.mask``/``OneOf.mask`` do here, without a request per mask change: a regex allows a
token where the text with it can still become a match and EOS once it is one; an ``in`` list
becomes a grammar over token ids (``choice_grammar``). Everything else keeps the client-side
masks (``generation.generate``).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from lmql_core.api.llm import LLM
from lmql_core.query.constraints import And, Junction, Leaf, Node, OneOf, Regex, Value
from lmql_core.query.variable import OnToken, Sampling, Variable
from lmql_core.query.vocabulary import Vocabulary

MAX_CHOICE_STATES = 2000  # an ``in`` list's token automaton larger than this stays client-side


def server_constraint(variable: Variable) -> tuple[str, str] | None:
    """The GENERATE field (``regex`` or ``grammar``) and value the server could follow for
    ``variable`` alone, or None (client-side masks)."""
    leaves = _conjunction(variable.where) if variable.where is not None else None
    if not leaves:
        return None
    own = [leaf for leaf in leaves if isinstance(leaf, Leaf) and leaf.var == variable.name]
    if len(own) != 1 or not isinstance(own[0], Regex | OneOf):
        return None
    argument = variable.scope.eval(own[0].args[0])
    if isinstance(own[0], Regex):
        if not isinstance(argument, str) or not argument.isascii() or not _compiles(argument):
            return None
        found = ("regex", argument)
    else:
        if isinstance(argument, str) or not all(isinstance(o, str) and o.isascii() for o in argument):
            return None
        grammar = choice_grammar(list(argument), variable.vocab)
        if grammar is None:
            return None
        found = ("grammar", grammar)
    start = Value([], "", "")
    for node in leaves:  # the others do not depend on this variable's text: true or false throughout
        if node is not own[0]:
            allowed = node.allowed(variable.name, start, variable.scope, variable.vocab)
            if allowed.tokens is not None or not allowed.eos:
                return None
    return found


def choice_grammar(options: list[str], vocab: Vocabulary) -> str | None:
    """``V in options`` as ``OneOf.mask`` has it, as a grammar over token ids: after the text v,
    the first token of each remaining option's own tokenization, or the end where v is an option
    (a state per text; None past MAX_CHOICE_STATES)."""
    states: dict[str, int] = {"": 0}
    queue: list[tuple[str, list[int]]] = [("", [])]
    rules = []
    while queue:
        text, ids = queue.pop(0)
        rests = [o[len(text):] for o in options if o.startswith(text)]
        alternatives = ['""'] if "" in rests or not rests else []
        for token in sorted({vocab.encode(r)[0] for r in rests if r}):
            following = vocab.decode(ids + [token])
            if following not in states:
                if len(states) >= MAX_CHOICE_STATES:
                    return None
                states[following] = len(states)
                queue.append((following, ids + [token]))
            alternatives.append(f"<[{token}]> {_rule(states[following])}")
        rules.append(f"{_rule(states[text])}: {' | '.join(alternatives)}")
    return "\n".join(rules)


def _rule(state: int) -> str:
    return "start" if state == 0 else f"s{state}"


def _conjunction(node: Node) -> list[Node] | None:
    """The nodes ``and``-ed together at the top of the clause; None where an ``or`` joins them."""
    if type(node) is And:
        parts: list[Node] = []
        for child in node.children:
            found = _conjunction(child)
            if found is None:
                return None
            parts.extend(found)
        return parts
    return None if isinstance(node, Junction) else [node]  # the other junction, Or, is an ``or``


def _compiles(pattern: str) -> bool:
    """Whether llguidance takes the regex (lookarounds and back-references it does not)."""
    from llguidance import LLMatcher

    return not LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))


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
