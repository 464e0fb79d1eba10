"""The constraint tree's structure: ``Rule`` (what every kind answers, and the same for a whole
tree), ``Truth``, ``Holds``, and the junctions ``And``/``Or``. The kinds with arguments are in
``kinds.py``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from lmql_core.constraints.mask import ANY, Allowed, ConstraintError, Value
from lmql_core.constraints.step import Step
from lmql_core.constraints.vocabulary import Vocabulary

Decided = tuple[str, int]  # an earlier hole's value: its prompt text, and how many tokens it was generated as
OPEN_CAP = 4096  # ``open_below`` looks no further (a longer value then takes the ordinary path)


class Rule:
    """One evaluated constraint (a kind); the base constrains nothing."""

    kind: ClassVar[str]

    def nodes(self) -> Iterator[Rule]:
        yield self

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        return ANY

    def holds(self, text: str, vocab: Vocabulary, tokens: int | None = None) -> bool:
        """Whether a decided value meets this constraint; ``tokens``: how many tokens it was
        generated as (None: as many as its text encodes to)."""
        return True

    def step(self, value: Value, vocab: Vocabulary) -> Step:
        """Where the variable stands with ``value``: its mask, and whether a stopping phrase ended it."""
        return Step(self.mask(value, vocab), bool(value.ids) and self.reached(value))

    def bound(self, values: dict[int, Decided], vocab: Vocabulary) -> Rule:
        """This tree once the template's earlier holes have their values (``Holds``)."""
        return self

    # what one kind does beyond its mask (each kind overrides its own): end the variable, cut its
    # text, bound the tokens of one request, make its value
    def ends(self, value: Value) -> bool:
        return False

    def cut(self, value: Value) -> str | None:
        return None

    def budget(self, generated: int) -> int | None:
        return None

    def allows_all_after(self, generated: int) -> bool:
        """Whether the step after any ``generated`` tokens allows every token and the end, and no
        stopping phrase can end the variable there, whatever the tokens are (the engine then
        needs none of them on the host for that step's mask). False unless a kind knows better."""
        return False

    def open_below(self) -> int:
        """How many tokens the variable may have before ``allows_all_after`` fails for the first
        time (at most OPEN_CAP): while fewer, no step needs its tokens, its mask or a look at them."""
        generated = 0
        while generated < OPEN_CAP and self.allows_all_after(generated):
            generated += 1
        return generated

    def value_of(self, text: str) -> tuple[str, Any] | None:
        return None

    # the same for the whole tree
    def reached(self, value: Value) -> bool:
        """Whether a stopping phrase of the tree ends the variable with ``value``."""
        return any(n.ends(value) for n in self.nodes())

    def trim(self, value: Value) -> str | None:
        """The value cut by the tree's stopping phrases (the shortest cut), None: no cut."""
        cuts = [t for n in self.nodes() if (t := n.cut(value)) is not None]
        return min(cuts, key=len) if cuts else None

    def token_budget(self, generated: int, chunk: int) -> int:
        """How many tokens one request may ask for after ``generated`` ones."""
        return min([chunk] + [b for n in self.nodes() if (b := n.budget(generated)) is not None])

    def postprocess(self, text: str) -> tuple[str, Any]:
        """The text a finished value puts in the prompt, and its value."""
        for node in self.nodes():
            made = node.value_of(text)
            if made is not None:
                return made
        return text, text

    def fields(self) -> dict[str, Any]:
        """The JSON fields beside ``kind`` (``to_json``)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The rule as the wire carries it (``serial.from_json`` reads it back)."""
        return {"kind": self.kind, **self.fields()}

    def conjuncts(self) -> list[Rule] | None:
        """The rules ``and``-ed together at the top of the tree; None where an ``or`` joins them."""
        return [self]

    def grammar(self, vocab: Vocabulary) -> tuple[str, str] | None:
        """The GENERATE field (``regex`` or ``grammar``) and value that masks as this kind alone
        does, or None."""
        return None

    def server_grammar(self, vocab: Vocabulary) -> tuple[str, str] | None:
        """The grammar of the tree where one kind alone constrains it (the others true), or None."""
        parts = self.conjuncts()
        if parts is None:
            return None
        constraining = [p for p in parts if p != Truth(True)]
        return constraining[0].grammar(vocab) if len(constraining) == 1 else None


@dataclass
class Truth(Rule):
    """A condition that no longer depends on the variable: true constrains nothing, false allows nothing."""

    value: bool
    kind: ClassVar[str] = "truth"

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        return ANY if self.value else Allowed(vocab.nothing(), False)

    def allows_all_after(self, generated: int) -> bool:
        return self.value

    def open_below(self) -> int:
        return OPEN_CAP if self.value else 0

    def fields(self) -> dict[str, Any]:
        return {"value": self.value}


@dataclass
class Holds(Rule):
    """A constraint on an earlier hole of the same template (``hole``: its index), which the
    server decides once that hole has its value: true or false as ``Truth``."""

    hole: int
    rule: Rule
    kind: ClassVar[str] = "holds"

    def __post_init__(self) -> None:
        if isinstance(self.hole, bool) or not isinstance(self.hole, int) or self.hole < 0:
            raise ConstraintError(f"'hole' is the index of an earlier hole, not {self.hole!r}")

    def nodes(self) -> Iterator[Rule]:
        yield self  # not the rule inside: it constrains another variable

    def bound(self, values: dict[int, Decided], vocab: Vocabulary) -> Rule:
        if self.hole not in values:
            raise ConstraintError(f"a constraint refers to hole {self.hole}, which has no value yet")
        text, tokens = values[self.hole]
        return Truth(self.rule.holds(text, vocab, tokens))

    def fields(self) -> dict[str, Any]:
        return {"hole": self.hole, "rule": self.rule.to_json()}


@dataclass
class Junction(Rule):
    children: list[Rule]

    def bound(self, values: dict[int, Decided], vocab: Vocabulary) -> Rule:
        return type(self)([child.bound(values, vocab) for child in self.children])

    def nodes(self) -> Iterator[Rule]:
        yield self
        for child in self.children:
            yield from child.nodes()

    def fields(self) -> dict[str, Any]:
        return {"children": [c.to_json() for c in self.children]}


@dataclass
class And(Junction):
    kind: ClassVar[str] = "and"

    def allows_all_after(self, generated: int) -> bool:
        return all(child.allows_all_after(generated) for child in self.children)

    def open_below(self) -> int:
        return min((child.open_below() for child in self.children), default=OPEN_CAP)

    def conjuncts(self) -> list[Rule] | None:
        parts: list[Rule] = []
        for child in self.children:
            found = child.conjuncts()
            if found is None:
                return None
            parts.extend(found)
        return parts

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        result = ANY
        for child in self.children:
            result = joined(result, child.mask(value, vocab), vocab, both=True)
        return result


@dataclass
class Or(Junction):
    kind: ClassVar[str] = "or"

    def conjuncts(self) -> list[Rule] | None:
        return None

    def __post_init__(self) -> None:
        if not self.children:
            raise ConstraintError("'or' needs at least one constraint")

    def mask(self, value: Value, vocab: Vocabulary) -> Allowed:
        results = [child.mask(value, vocab) for child in self.children]
        combined = results[0]
        for result in results[1:]:
            combined = joined(combined, result, vocab, both=False)
        return combined


def joined(a: Allowed, b: Allowed, vocab: Vocabulary, both: bool) -> Allowed:
    """``a & b`` (``both``) or ``a | b``; where both masks are ones the vocabulary remembers
    (read-only), their join is remembered too (the entry holds both, so their ids stay theirs)."""
    x, y = a.tokens, b.tokens
    if x is None or y is None or x.flags.writeable or y.flags.writeable:
        return a & b if both else a | b
    key = ("and" if both else "or", id(x), id(y))
    tokens = vocab.remember(key, lambda: (x, y, x & y if both else x | y))[2]
    return Allowed(tokens, a.eos and b.eos if both else a.eos or b.eos)
