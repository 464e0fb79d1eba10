"""The JSON form of an evaluated constraint tree (``kinds``), as a request carries it:
``{"kind": "and", "children": [{"kind": "one_of", "options": ["a", "b"]}, ...]}``.

``from_json`` is strict: an unknown kind, a missing or unknown key, a value of the wrong type or
a tree nested deeper than ``MAX_DEPTH`` or larger than ``MAX_NODES`` is a ``ConstraintError``
naming what is wrong.
"""

from __future__ import annotations

from typing import Any

from lmql_core.constraints.kinds import KINDS, ConstraintError, Holds, Junction, Rule

MAX_DEPTH = 32
MAX_NODES = 1000

# each kind's keys beside "kind": (the types its value may have, what it is, in words)
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "truth": {"value": ((bool,), "a boolean")},
    "and": {"children": ((list,), "a list of constraints")},
    "or": {"children": ((list,), "a list of constraints")},
    "stops_at": {"phrase": ((str,), "a string"), "before": ((bool,), "a boolean")},
    "count": {"op": ((str,), "a string"), "limit": ((int, float), "a number"),
              "tokens": ((bool,), "a boolean")},
    "one_of": {"options": ((list,), "a list of strings")},
    "none_of": {"options": ((list,), "a list of strings")},
    "contains": {"phrase": ((str,), "a string"), "negate": ((bool,), "a boolean")},
    "int": {},
    "regex": {"pattern": ((str,), "a string")},
    "holds": {"hole": ((int,), "an integer"), "rule": ((dict,), "a constraint")},
}


def to_json(rule: Rule) -> dict[str, Any]:
    return rule.to_json()


def from_json(data: Any) -> Rule:
    """The tree ``data`` describes (see the module's docstring)."""
    count = [0]
    return _node(data, 0, count)


def _node(data: Any, depth: int, count: list[int]) -> Rule:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_NODES:
        raise ConstraintError(f"the constraint tree is too large (at most {MAX_NODES} constraints, "
                              f"{MAX_DEPTH} levels deep)")
    if not isinstance(data, dict):
        raise ConstraintError(f"a constraint is an object with a 'kind', not {type(data).__name__}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConstraintError(f"unknown constraint kind {kind!r} (expected one of {', '.join(KINDS)})")
    expected = FIELDS[kind]
    keys = set(data) - {"kind"}
    if keys != set(expected):
        unknown, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
        parts = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + \
            ([f"missing key(s) {', '.join(missing)}"] if missing else [])
        raise ConstraintError(f"'{kind}' constraint: {'; '.join(parts)}")
    for key, (types, words) in expected.items():
        value = data[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ConstraintError(f"'{kind}' constraint: '{key}' must be {words}, not {type(value).__name__}")
    fields = {key: data[key] for key in expected}
    cls = KINDS[kind]
    if issubclass(cls, Junction):
        fields["children"] = [_node(child, depth + 1, count) for child in data["children"]]
    if cls is Holds:
        fields["rule"] = _node(data["rule"], depth + 1, count)
    try:
        return cls(**fields)
    except ConstraintError as e:
        raise ConstraintError(f"'{kind}' constraint: {e}") from None
