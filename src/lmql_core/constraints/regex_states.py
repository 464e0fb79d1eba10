"""Where a text stands in a regular expression: a state that every text with the same
continuations shares (the set of automaton positions reached), so REGEX masks are computed once
per state, not once per text.

The state only keys a cache: the masks themselves always come from ``regex``'s own partial
matching. It is built from Python's ``re`` parser for the part of the syntax where ``re`` and
``regex`` agree on what matches (literals, sets of literals and ranges, ``.``, groups,
alternation, repetition); anything else (anchors, lookarounds, backreferences, flags, ``\\d``-like
classes, possessive or atomic parts, POSIX classes) has no automaton and is keyed by its text.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

# the standard library's own regex parser, untyped: its parse trees are read as Any
sre: Any
sre_parse: Any
try:  # Python 3.11+
    sre, sre_parse = importlib.import_module("re._constants"), importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - Python 3.10
    sre, sre_parse = importlib.import_module("sre_constants"), importlib.import_module("sre_parse")

MAX_POSITIONS = 20_000  # a pattern whose automaton would be larger is keyed by text
MAX_STEPS = 200_000  # remembered transitions per pattern before they are forgotten
MAX_REACH = 2_000  # positions one position reaches without a character: more, and texts are the keys


class Unsupported(Exception):
    """The pattern uses syntax outside the subset (see the module's docstring)."""


State = frozenset[int]
Test = Callable[[str], bool]


class Automaton:
    """A Thompson automaton of a pattern: ``tests[n]`` (a character test and the next
    position) or ``empty[n]`` (positions reached without a character)."""

    def __init__(self) -> None:
        self.tests: list[tuple[Test, int] | None] = []
        self.test_keys: list[Any] = []  # what each test is (equal keys: the same characters pass)
        self.empty: list[list[int]] = []
        self.accept = -1
        self.usable = True  # False once its states proved too large (see ``_reach``)
        self._closures: dict[int, State] = {}
        self._steps: dict[tuple[State, str], State] = {}

    def position(self) -> int:
        if len(self.tests) >= MAX_POSITIONS:
            raise Unsupported("too many positions")
        self.tests.append(None)
        self.test_keys.append(None)
        self.empty.append([])
        return len(self.tests) - 1

    def start(self) -> State:
        return self._closure({0})

    def advance(self, state: State, text: str) -> State:
        """The state after ``text`` from ``state`` (empty: no match can follow)."""
        for char in text:
            if not state:
                return state
            key = (state, char)
            following = self._steps.get(key)
            if following is None:
                reached = set()
                for n in state:
                    test = self.tests[n]
                    if test is not None and test[0](char):
                        reached.add(test[1])
                following = self._closure(reached)
                if len(self._steps) >= MAX_STEPS:
                    self._steps.clear()
                self._steps[key] = following
            state = following
        return state

    def future_classes(self, depth: int) -> dict[int, int]:
        """Each position a state may hold (a tested one, the end) -> its class: positions of one
        class accept the same strings of up to ``depth`` characters, with the same positions'
        classes after each (Moore's refinement, ``depth`` rounds at most, fewer where it settles).
        A state's set of classes then decides which strings of up to ``depth`` characters keep a
        partial match and where the end is reached: all a REGEX mask reads of it, where no token
        is longer (regex's partial match is a text whose every character the pattern could take)."""
        tested = [n for n, test in enumerate(self.tests) if test is not None]
        after = {n: self._closure({self.tests[n][1]}) for n in tested}  # type: ignore[index]
        ids: dict[Any, int] = {}
        classes = {n: ids.setdefault(self.test_keys[n], len(ids)) for n in tested}
        classes[self.accept] = -1  # the end's class: it tests no character
        for _ in range(depth):
            count, ids = len(ids), {}
            refined = {n: ids.setdefault((self.test_keys[n], frozenset(classes[m] for m in after[n])),
                                         len(ids))
                       for n in tested}
            refined[self.accept] = -1
            classes = refined
            if len(ids) == count:  # no class split: none will at any depth
                break
        return classes

    def _closure(self, positions: set[int]) -> State:
        found: set[int] = set()
        for n in positions:
            cached = self._closures.get(n)
            if cached is None:
                cached = self._closures[n] = self._reach(n)
            found |= cached
        return frozenset(found)

    def _reach(self, n: int) -> State:
        """The positions where a character is tested (or the end) reached from ``n`` alone."""
        seen, todo = {n}, [n]
        while todo:
            for m in self.empty[todo.pop()]:
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
            if len(seen) > MAX_REACH:  # e.g. (x?){0,3000}: states too large to be worth keys
                self.usable = False
                raise Unsupported("states too large")
        return frozenset(m for m in seen if self.tests[m] is not None or m == self.accept)


@lru_cache(maxsize=64)
def automaton(pattern: str) -> Automaton | None:
    """The automaton of ``pattern``, or None where the pattern is outside the subset."""
    if "[:" in pattern:  # regex reads POSIX classes where re reads a set of characters
        return None
    try:
        parsed = sre_parse.parse(pattern)
        if parsed.state.flags & ~re.UNICODE:
            raise Unsupported("flags")
        machine = Automaton()
        first = machine.position()
        machine.accept = _sequence(machine, list(parsed), first)
    except (Unsupported, re.error, RecursionError, OverflowError):
        return None
    return machine


def _sequence(machine: Automaton, items: list[tuple[Any, Any]], at: int) -> int:
    for op, argument in items:
        at = _item(machine, op, argument, at)
    return at


def _item(machine: Automaton, op: object, argument: Any, at: int) -> int:
    if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
        end = machine.position()
        machine.tests[at] = (_test(op, argument), end)
        machine.test_keys[at] = (op, tuple(argument) if isinstance(argument, list) else argument)
        # a tested position has no empty edges: give it a fresh successor to chain from
        return end
    if op is sre.SUBPATTERN:
        _group, add_flags, del_flags, items = argument
        if add_flags or del_flags:
            raise Unsupported("inline flags")
        return _sequence(machine, list(items), at)
    if op is sre.BRANCH:
        _, alternatives = argument
        end = machine.position()
        for alternative in alternatives:
            begin = machine.position()
            machine.empty[at].append(begin)
            machine.empty[_sequence(machine, list(alternative), begin)].append(end)
        return end
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # greedy or lazy: the same texts match
        low, high, items = argument
        return _repeat(machine, list(items), int(low), high, at)
    raise Unsupported(str(op))


def _repeat(machine: Automaton, items: list[tuple[Any, Any]], low: int, high: Any, at: int) -> int:
    for _ in range(low):
        at = _fresh(machine, items, at)
    if high == sre.MAXREPEAT:
        loop = machine.position()
        machine.empty[at].append(loop)
        machine.empty[_fresh(machine, items, loop)].append(loop)
        return loop
    end = machine.position()
    machine.empty[at].append(end)
    for _ in range(int(high) - low):
        at = _fresh(machine, items, at)
        machine.empty[at].append(end)
    return end


def _fresh(machine: Automaton, items: list[tuple[Any, Any]], at: int) -> int:
    """One more copy of ``items`` after ``at``, from a position of its own (so no edge leaks)."""
    begin = machine.position()
    machine.empty[at].append(begin)
    return _sequence(machine, items, begin)


def _test(op: object, argument: Any) -> Test:
    if op is sre.LITERAL:
        wanted = chr(argument)
        return wanted.__eq__
    if op is sre.NOT_LITERAL:
        unwanted = chr(argument)
        return unwanted.__ne__
    if op is sre.ANY:
        return "\n".__ne__
    return _set_test(list(argument))


def _set_test(items: list[tuple[Any, Any]]) -> Test:
    negate, chars, ranges = False, set(), []
    for op, argument in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            chars.add(chr(argument))
        elif op is sre.RANGE:
            low, high = argument
            ranges.append((chr(low), chr(high)))
        else:
            raise Unsupported(str(op))  # a category (\d, \w, \s): re and regex differ on them
    frozen = frozenset(chars)

    def test(char: str) -> bool:
        inside = char in frozen or any(low <= char <= high for low, high in ranges)
        return inside != negate

    return test
