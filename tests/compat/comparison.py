"""How the compatibility runner (run_compat.py) compares two sides' records: equal results
within a tolerance, the right shape for sampled ones, and the table it prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TOLERANCE = 1e-3


def same(a: Any, b: Any, tolerance: float = TOLERANCE) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= tolerance
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tolerance) for k in a)
    return bool(a == b)


def sampled_queries(result: Any) -> bool:
    """``sample(n=2)`` over ``[STORY]``: two results, each with a string STORY of < 10 tokens."""
    return (isinstance(result, list) and len(result) == 2
            and all(isinstance(r["variables"].get("STORY"), str) for r in result))


def sampled_texts(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 2 and all(isinstance(r, str) for r in result)


@dataclass
class Row:
    section: str
    check: str
    left: dict[str, Any] | None
    right: dict[str, Any] | None
    ok: bool
    how: str


# Checks whose expected result is an error, by the start of its message: both sides must raise
# it. None today (``error_unserved_model`` records what LMQL's client raised as its result).
EXPECTED_ERRORS: dict[str, str] = {}


def compare(section: str, check: str, left: dict[str, Any] | None, right: dict[str, Any] | None,
            shape: Callable[[Any], bool] | None = None, equal: bool = True) -> Row:
    """Both sides must have run; then equal results (or, for sampling, the right shape on both;
    or both). An error fails the row, the same error on both sides too (a program that fails
    everywhere checks nothing), unless the check expects that error (EXPECTED_ERRORS)."""
    if left is None or right is None:
        return Row(section, check, left, right, False, "ran")
    if "error" in left or "error" in right:
        expected = EXPECTED_ERRORS.get(check)
        ok = expected is not None and all(str(r.get("error", "")).startswith(expected) for r in (left, right))
        return Row(section, check, left, right, ok, "error")
    ok = shape is None or (shape(left["result"]) and shape(right["result"]))
    if equal:
        ok = ok and same(left["result"], right["result"])
    return Row(section, check, left, right, ok, "equal" if equal else "shape")


def one_sided(section: str, check: str, right: dict[str, Any] | None, ok: Callable[[Any], bool]) -> Row:
    good = right is not None and "error" not in right and ok(right["result"])
    return Row(section, check, None, right, good, "ours")


def cell(record: dict[str, Any] | None, width: int) -> str:
    if record is None:
        text = "(not run)"
    elif "error" in record:
        text = "ERROR " + record["error"]
    else:
        text = json.dumps(record["result"], ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[Row]) -> None:
    width = 44
    header = f"{'check':<28} {'LMQL 0.7.3 server / client':<{width}} {'lmql-core':<{width}} {'cmp':<6} result"
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            print(f"\n== {section}\n{header}\n{'-' * len(header)}")
        verdict = "PASS" if row.ok else "FAIL"
        print(f"{row.check:<28} {cell(row.left, width):<{width}} {cell(row.right, width):<{width}} "
              f"{row.how:<6} {verdict}")


def show_failures(rows: list[Row]) -> None:
    for row in rows:
        if row.ok:
            continue
        print(f"\n--- FAIL {row.section}: {row.check} ({row.how})")
        for label, record in (("LMQL 0.7.3", row.left), ("lmql-core", row.right)):
            if record is not None:
                print(f"{label}: {json.dumps(record, ensure_ascii=False)[:3000]}")
