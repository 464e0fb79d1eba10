"""The table of benchmarks/workloads.py: one row per run, our rows with their ratio to LMQL
0.7.3's run of the same point, the targets beside; the servers' start-up times below."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS = ("workload", "model", "point", "server", "phase", "new tokens", "tok/s", "req/s",
           "TTFT median ms", "TTFT p90 ms", "ITL median ms", "x LMQL 0.7.3", "target")
OURS = "lmql-core"


def key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["model"], row["workload"], row["point"]


def is_score(row: dict[str, Any]) -> bool:
    return str(row.get("new_tokens", "")).startswith("score")


def rate(row: dict[str, Any]) -> float | None:
    """What a point is measured in: requests/s for SCORE, tok/s otherwise."""
    value = row.get("req_per_s" if is_score(row) else "tok_per_s")
    return float(value) if value else None


def ratio(row: dict[str, Any], yardsticks: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    theirs = yardsticks.get(key(row))
    ours, base = rate(row), rate(theirs) if theirs else None
    if row["server"] != OURS:
        return ""
    return f"{ours / base:.1f}x" if ours and base else "—"


def target(row: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The point's target; on a first-after-Ready row also twice the warm runs' median TTFT."""
    if row["server"] != OURS:
        return ""
    if row["phase"] != "first after Ready":
        return str(row.get("target", ""))
    warm = [r["ttft_median_ms"] for r in runs
            if key(r) == key(row) and r["server"] == OURS and r is not row and "ttft_median_ms" in r]
    first = f"TTFT <= 2x warm ({2 * statistics.median(warm):.0f} ms)" if warm else ""
    return "; ".join(t for t in (first, row.get("target", "")) if t)


Row = dict[str, Any]


def cells(row: Row, runs: list[Row], yardsticks: dict[tuple[str, str, str], Row]) -> list[str]:
    if "error" in row:
        measured = [str(row["error"]).replace("|", "/").replace("\n", " "), *[""] * 5]
    else:
        measured = [str(row.get(name, "")) for name in ("tok_per_s", "req_per_s", "ttft_median_ms",
                                                         "ttft_p90_ms", "itl_median_ms")]
        if not is_score(row):
            measured[1] = ""
    head = [str(row.get(name, "")) for name in ("workload", "model", "point", "server", "phase",
                                                 "new_tokens")]
    return [*head, *measured, ratio(row, yardsticks), target(row, runs)]


def markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    runs = [r for r in rows if "workload" in r]
    yardsticks = {key(r): r for r in runs if r["server"] != OURS and "error" not in r}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    first_seen: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(runs):
        first_seen.setdefault(key(r), i)
    order = sorted(runs, key=lambda r: (first_seen[key(r)], r["server"] != OURS))  # ours, then LMQL's
    lines += ["| " + " | ".join(cells(r, runs, yardsticks)) + " |" for r in order]
    lines += ["", "| server | model | start-up s (to Ready; LMQL: to its first token) |", "|---|---|---|"]
    lines += [f"| {r['server']} | {r['model']} | {r.get('startup_s', r.get('error', ''))} |"
              for r in rows if "workload" not in r]
    return "\n".join([*lines, "", *(f"- {note}" for note in notes)])


def print_table(rows: list[dict[str, Any]], notes: list[str], out: Path | None) -> None:
    text = markdown(rows, notes)
    print(text, flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "workloads.md").write_text(text + "\n")
        (out / "results.json").write_text(json.dumps(rows, indent=1))
