"""Issue 31's CPU target: constrained LMQL programs, our runtime and server against LMQL 0.7.3's.

    python benchmarks/constrained_programs.py --lmql-python /work/lmql073/bin/python [--reps 3] [--rounds 1]

The five programs of the issue's "Done when" (a choice among 20 with ``in``, ``len(X) < n`` in
characters, a REGEX date, INT, a 4-variable template), greedy, on lmql-tiny
(``tests/compat/build_model.py`` makes the folder both servers load). Each side runs them one
after another with its own runtime against its own server: ours (``lmql serve-model``) and
LMQL 0.7.3's (its ``lmql serve-model``, its environment, without our PYTHONPATH). Every run
gets a fresh input at the start of its prompt (no cache helps); one untimed run per program
first (LMQL's server loads its model on the first request). Prints ms/program (median) per
side, the ratio (target: at least 10x), and for ours the engine sequences each program ran (from
the server's /metrics: the path the runtime took; a statement sent as one template GENERATE runs
one sequence per variable, the client's masks one per mask change). Any value that differs from
LMQL's is printed as a MISMATCH and makes the exit status 1. Without --lmql-python only ours runs.
With ``--rounds N`` the two sides take turns N times (ours, LMQL's, ours, ...), each round with
fresh servers and inputs, and the medians are over every round's runs: on a machine whose load
changes, both sides then see it alike.

The same file, with ``--run ENDPOINT FOLDER``, is the runner each side's Python executes (it
imports only the standard library and that side's ``lmql``) and prints one ``BENCH {json}`` line
per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
          "cyan", "magenta", "olive", "navy", "teal", "maroon", "silver", "gold", "beige"]
PROGRAMS = {  # LMQL 0.7.3's syntax; ``name`` is the input that differs in every run
    "choice in 20": f'argmax\n    "{{name}}. Favourite colour: [COLOR]"\nwhere\n    COLOR in {COLORS!r}',
    "len(X) < n": 'argmax\n    "{name}. Summary: [SUMMARY]"\nwhere\n    len(SUMMARY) < 40',
    "REGEX date": ('argmax\n    "{name} was born on [DATE]"\nwhere\n'
                   '    REGEX(DATE, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")'),
    "INT": 'argmax\n    "{name} is [AGE] years old."\nwhere\n    INT(AGE) and len(TOKENS(AGE)) < 4',
    "4-variable template": (
        'argmax\n    "{name}\\nName: [NAME]\\nAge: [AGE]\\nCity: [CITY]\\nBio: [BIO]"\nwhere\n'
        '    STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 8 and INT(AGE) and len(TOKENS(AGE)) < 4\n'
        '    and CITY in ["Paris", "Zurich", "Tokyo"] and len(TOKENS(BIO)) < 16'),
}
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
OURS, LMQL = "lmql-core", "lmql 0.7.3"
TARGET_RATIO = 10.0  # issue 31: CPU, at least 10x LMQL 0.7.3 with lmql-tiny
REQUEST_METRICS = ("lmql_sequences_finished", "lmql_sequences_cancelled")


def input_for(run: int) -> str:
    return f"{NAMES[run % len(NAMES)]} {1000 + 37 * run}"  # run -1 is the untimed first


# --- the runner (each side's Python) ------------------------------------------------------------

def requests_served(endpoint: str) -> float | None:
    """Sequences our server has ended, from its /metrics (None where it has none: LMQL's)."""
    try:
        text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    return sum(float(v) for name in REQUEST_METRICS
               for v in re.findall(rf"^{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


async def outcome(lmql: Any, source: str, model: Any, name: str) -> dict[str, Any]:
    """The program's values, or the error it ended with: an outcome like any other, compared
    between the sides (LMQL 0.7.3 raises ValueError where an INT value has no digit; ours too)."""
    try:
        result = await lmql.run(source, model=model, name=name)
    except ValueError:  # the sides' messages differ; that it ended so must not
        return {"error": "ValueError"}
    result = result[0] if isinstance(result, list) else result
    return {k: v for k, v in result.variables.items() if isinstance(v, str | int)}


async def run_side(endpoint: str, folder: str, reps: int, first_input: int = 0) -> None:
    """``reps`` timed runs of each program (after an untimed one), the inputs of runs
    ``first_input`` onwards."""
    import lmql

    model = lmql.model(folder, endpoint=endpoint, tokenizer=folder)
    for program, source in PROGRAMS.items():
        for run in range(-1, reps):
            before = requests_served(endpoint)
            start = time.perf_counter()
            values = await outcome(lmql, source, model, input_for(run if run < 0 else run + first_input))
            ms = (time.perf_counter() - start) * 1000
            after = requests_served(endpoint)
            record = {"program": program, "run": run, "ms": ms, "values": values,
                      "requests": None if before is None or after is None else after - before}
            print("BENCH " + json.dumps(record), flush=True)


# --- the benchmark (our Python) -------------------------------------------------------------------

def side_records(name: str, command: list[str], env: dict[str, str], python: str, folder: Path,
                 reps: int, first_input: int = 0) -> list[dict[str, Any]]:
    """Start the side's server, run the programs with its runtime, stop it."""
    from processes import free_port, start_server

    port = free_port()
    server = start_server([*command, "--port", str(port)], port, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.STDOUT)
    try:
        return runner_records(name, python, f"127.0.0.1:{port}", folder, reps, env, first_input)
    finally:
        server.terminate()
        server.wait(timeout=30)


def runner_records(name: str, python: str, endpoint: str, folder: Path, reps: int,
                   env: dict[str, str], first_input: int = 0) -> list[dict[str, Any]]:
    """The programs run by ``python``'s runtime against the server at ``endpoint``."""
    runner = [python, __file__, "--run", endpoint, str(folder), "--reps", str(reps),
              "--first-input", str(first_input)]
    done = subprocess.run(runner, capture_output=True, text=True, env=env, timeout=1800)
    records = [json.loads(line[len("BENCH "):]) for line in done.stdout.splitlines()
               if line.startswith("BENCH ")]
    if done.returncode != 0 or len(records) != len(PROGRAMS) * (reps + 1):
        raise RuntimeError(f"{name}'s runner failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return records


def spread(median: float, runs: list[dict[str, Any]]) -> str:
    times = [r["ms"] for r in runs]
    return f"{median:.1f} ({min(times):.0f}-{max(times):.0f})"


def table(results: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """The markdown rows and the mismatches against LMQL 0.7.3's values."""
    lines = ["| program | lmql-core ms/program (min-max) | engine sequences/program (ours) | "
             "lmql 0.7.3 ms/program (min-max) | ratio of medians |", "| --- | --- | --- | --- | --- |"]
    mismatches = []
    for program in PROGRAMS:
        timed = {side: [r for r in records if r["program"] == program and r["run"] >= 0]
                 for side, records in results.items()}
        ours = statistics.median(r["ms"] for r in timed[OURS])
        requests = sorted({r["requests"] for r in timed[OURS]})
        theirs = statistics.median(r["ms"] for r in timed[LMQL]) if LMQL in timed else None
        ratio = f"{theirs / ours:.1f}x" if theirs else "—"
        shown_theirs = spread(theirs, timed[LMQL]) if theirs else "—"
        lines.append(f"| {program} | {spread(ours, timed[OURS])} | {', '.join(f'{n:g}' for n in requests)} | "
                     f"{shown_theirs} | {ratio} |")
        if LMQL in timed:
            for mine, reference in zip(timed[OURS], timed[LMQL], strict=True):
                if mine["values"] != reference["values"]:
                    mismatches.append(f"MISMATCH {program} run {mine['run']}: lmql-core {mine['values']} "
                                      f"!= lmql 0.7.3 {reference['values']}")
    return lines, mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmql-python", help="python of an environment with lmql==0.7.3")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per program and side")
    parser.add_argument("--rounds", type=int, default=1, help="turns of both sides, one after the other")
    parser.add_argument("--run", nargs=2, metavar=("ENDPOINT", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--first-input", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        asyncio.run(run_side(*args.run, args.reps, args.first_input))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from processes import OFFLINE_ENV, lmql_073_env

    with tempfile.TemporaryDirectory(prefix="lmql-bench-programs-") as work:
        folder = Path(work) / "lmql-tiny"
        subprocess.run([sys.executable, str(ROOT / "tests" / "compat" / "build_model.py"), str(folder)],
                       check=True)
        sides = {OURS: ([sys.executable, "-m", "lmql_core", "serve-model", str(folder)],
                        {**os.environ, **OFFLINE_ENV}, sys.executable)}
        if args.lmql_python:
            script = str(Path(args.lmql_python).parent / "lmql")  # that environment's `lmql` command
            sides[LMQL] = ([script, "serve-model", str(folder)], lmql_073_env(None, None), args.lmql_python)
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for turn in range(args.rounds):
            for side, (command, env, python) in sides.items():
                first = turn * args.reps  # each round its own inputs
                records = side_records(side, command, env, python, folder, args.reps, first)
                results[side] += [{**r, "run": r["run"] + turn * args.reps} for r in records if r["run"] >= 0]
    lines, mismatches = table(results)
    print(f"constrained programs, greedy, lmql-tiny, {args.reps} timed runs each (median)")
    print("\n".join(lines))
    for record in results[OURS]:
        if record["run"] == 0:
            print(f"{record['program']}: {input_for(0)!r} -> {record['values']}")
    for line in mismatches:
        print(line)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
