"""The constraint kinds' JSON form (what a template request carries): every kind goes there and
back unchanged, and a malformed tree is refused with a message naming what is wrong."""

from __future__ import annotations

import json

import pytest

from lmql_core.constraints import kinds
from lmql_core.constraints.serial import MAX_DEPTH, from_json, to_json

EVERY_KIND = kinds.And([
    kinds.Truth(True),
    kinds.Or([kinds.OneOf(["a", "b c"]), kinds.NoneOf(["x"])]),
    kinds.StopsAt("\n", before=True),
    kinds.Count("<", 5, tokens=True),
    kinds.Count(">=", 2.5, tokens=False),
    kinds.Contains("no", negate=True),
    kinds.IsInt(),
    kinds.Regex(r"[0-9]{4}-[0-9]{2}"),
    kinds.Holds(0, kinds.Count("<", 3, tokens=False)),
])


def test_every_kind_goes_to_json_and_back_unchanged() -> None:
    wire = json.loads(json.dumps(to_json(EVERY_KIND)))
    assert wire["kind"] == "and" and wire["children"][3] == {"kind": "count", "op": "<", "limit": 5,
                                                              "tokens": True}
    assert from_json(wire) == EVERY_KIND
    assert {type(n).kind for n in from_json(wire).nodes()} | {"count"} == set(kinds.KINDS)


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "grammar"}, "unknown constraint kind 'grammar'"),
    ({"children": []}, "unknown constraint kind None"),
    ([], "a constraint is an object with a 'kind', not list"),
    ({"kind": "one_of", "options": ["a"], "extra": 1}, "'one_of' constraint: unknown key(s) extra"),
    ({"kind": "stops_at", "phrase": "x"}, "'stops_at' constraint: missing key(s) before"),
    ({"kind": "count", "op": "<", "limit": True, "tokens": True}, "'limit' must be a number, not bool"),
    ({"kind": "count", "op": "~", "limit": 3, "tokens": True}, "unknown comparison '~'"),
    ({"kind": "one_of", "options": ["a", 3]}, "the options must be a list of strings"),
    ({"kind": "stops_at", "phrase": "", "before": False}, "the stopping phrase must be a non-empty string"),
    ({"kind": "regex", "pattern": "(["}, "invalid regular expression '(['"),
    ({"kind": "truth", "value": "yes"}, "'value' must be a boolean, not str"),
    ({"kind": "and", "children": [{"kind": "int", "x": 1}]}, "'int' constraint: unknown key(s) x"),
    ({"kind": "or", "children": []}, "'or' needs at least one constraint"),
    ({"kind": "holds", "hole": -1, "rule": {"kind": "int"}}, "'hole' is the index of an earlier hole"),
    ({"kind": "holds", "hole": 0, "rule": {"kind": "nope"}}, "unknown constraint kind 'nope'"),
])
def test_malformed_trees_are_refused_with_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(kinds.ConstraintError) as refused:
        from_json(data)
    assert message in str(refused.value)


def test_a_tree_nested_too_deep_is_refused() -> None:
    tree: dict[str, object] = {"kind": "int"}
    for _ in range(MAX_DEPTH + 1):
        tree = {"kind": "and", "children": [tree]}
    with pytest.raises(kinds.ConstraintError, match="too large"):
        from_json(tree)
