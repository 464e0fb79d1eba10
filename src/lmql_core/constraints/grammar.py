"""Constraint kinds as the grammars of the server's "constraints" extension, where one kind alone
can be followed that way with the same masks as its ``mask``: ``V in [...]`` as a grammar over
token ids."""

from __future__ import annotations

from lmql_core.constraints.vocabulary import Vocabulary

MAX_CHOICE_STATES = 2000  # an ``in`` list's token automaton larger than this stays client-side


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

