"""Issue 31, part A: what each constraint kind's mask costs per step on a real vocabulary.

    python benchmarks/mask_costs.py [--tokenizer PATH] [--vocab 50257] [--rows 64] [--reps 3]
    python benchmarks/mask_costs.py --grammar [--rows 64] [--walk-steps 128] [--threads 1,4,8] [--busy]

For each kind, a value grows token by token along a path a greedy run could take; at every
step a ``MaskConstraint`` fills the row the engine would apply (``fill``: the kind's mask, the
step's row, packed into int32 words), once for each of ``--rows`` streams standing at the same
place (the first one pays what is not cached yet, the others what is) and again on a fresh
vocabulary (``cold``: no cache at all). Prints µs per filled row: cold (the first time a text is
seen) and warm (the average over the rows).

``--grammar`` (issue 31 (b)/(c)): ``--rows`` llguidance grammars of ``constraints_gpu.py``'s JSON
schema through the engine's own pieces, as a step of the server runs them (``grammar_costs.py``).

Without --tokenizer, a byte-level BPE of ``--vocab`` tokens is trained on this machine's Python
sources (nothing downloads) and kept in the temporary folder for the next run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_bpe import python_sources_bpe  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
          "cyan", "magenta", "olive", "navy", "teal", "maroon", "silver", "gold", "beige"]


def kinds() -> dict[str, tuple[Any, str]]:
    """Each kind's constraint and the text its value grows into."""
    from lmql_core.constraints import kinds as k

    return {
        "in (20 options)": (k.OneOf(COLORS), "magenta"),
        "len(X) < 40 chars": (k.Count("<", 40, tokens=False), " a quiet town by the sea, with boats"),
        "len(TOKENS(X)) < 16": (k.Count("<", 16), " a quiet town by the sea"),
        "REGEX date": (k.Regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "2024-05-17"),
        "REGEX alternation": (k.Regex(r"(Monday|Tuesday|Mon|next week)( morning)?"), "Tuesday morning"),
        "REGEX permissive": (k.Regex(r"[^\n]{1,60}"), " a quiet town by the sea, with boats"),
        "INT": (k.IsInt(), " 1234"),
        "not 'x' in X": (k.Contains("xyz", negate=True), " a quiet town by the sea"),
        "STOPS_AT": (k.StopsAt("\n"), " a quiet town by the sea"),
        "4-variable (and)": (k.And([k.StopsAt("\n"), k.Count("<", 8), k.Contains("x", negate=True)]),
                             " Alice Smith"),
    }


def tokenizer(path: str | None, vocab: int) -> Any:
    from lmql_core.loading.tokenizer import JsonTokenizer

    tok = JsonTokenizer.from_file(path or str(python_sources_bpe(vocab)))
    if tok.eos_token_id is None:
        tok.eos_token_id = tok.vocab_size - 1
    return tok


def path_of(vocab: Any, text: str) -> list[int]:
    return vocab.encode(text)


def measure(rule: Any, text: str, tok: Any, rows: int) -> tuple[float, float, int]:
    """µs per row: cold (a fresh vocabulary, one row), warm (``rows`` rows at every step)."""
    import numpy as np

    from lmql_core.constraints.vocabulary import Vocabulary
    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words

    vocab = Vocabulary(tok)
    _ = vocab.texts, vocab.lengths  # once per tokenizer, at start-up (not a step's cost)
    ids = path_of(vocab, text)
    constraint = MaskConstraint(rule, vocab, mask_words(vocab.size, vocab))
    row = np.zeros(constraint.mask_words, dtype=np.int32)
    cold, warm = [], []
    for n in range(len(ids) + 1):
        started = time.perf_counter()
        constraint.fill(ids[:n], row)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(rows):
            constraint.fill(ids[:n], row)
        warm.append((time.perf_counter() - started) / rows)
    return statistics.mean(cold) * 1e6, statistics.mean(warm) * 1e6, len(ids) + 1


def walks(rule: Any, tok: Any, rows: int, steps: int) -> tuple[float, float]:
    """µs per row over ``rows`` rows that each take their own random path (a random allowed token
    at every step, as sampling from a random model would), the vocabulary's caches empty at the
    start: (all steps, the last half)."""
    import random

    import numpy as np

    from lmql_core.constraints.vocabulary import Vocabulary
    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words

    vocab = Vocabulary(tok)
    _ = vocab.texts, vocab.lengths, vocab.by_first_char
    rng = random.Random(0)
    from lmql_core.constraints.serial import from_json, to_json

    constraints = [MaskConstraint(from_json(to_json(rule)), vocab, mask_words(vocab.size, vocab))
                   for _ in range(rows)]  # a rule of its own for each row, as the server builds them
    paths: list[list[int]] = [[] for _ in range(rows)]
    bits = np.zeros((rows, constraints[0].mask_words), dtype=np.int32)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        for j, constraint in enumerate(constraints):
            constraint.fill(paths[j], bits[j])
        times.append((time.perf_counter() - started) / rows)
        allowed = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :vocab.size].astype(bool)
        for j in range(rows):  # a row that may only end stays where it is
            ids = [i for i in np.flatnonzero(allowed[j]) if i != vocab.eos]
            if ids:
                paths[j].append(int(rng.choice(ids)))
    return statistics.mean(times) * 1e6, statistics.mean(times[steps // 2:]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a tokenizer.json (default: a local BPE of --vocab tokens)")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="runs per kind (the median is shown)")
    parser.add_argument("--only", help="kinds whose name holds this")
    parser.add_argument("--walk-steps", type=int, default=0,
                        help="also: --rows rows on random paths of this many steps (µs per row)")
    parser.add_argument("--grammar", action="store_true", help="llguidance's JSON-schema masks instead")
    parser.add_argument("--threads", default="", help="--grammar: mask threads to try (default: the "
                        "engine's)")
    parser.add_argument("--busy", action="store_true", help="--grammar: also each beside a thread that keeps "
                        "the interpreter's lock busy")
    args = parser.parse_args()
    tok = tokenizer(args.tokenizer, args.vocab)
    if args.grammar:
        from grammar_costs import report

        threads = [int(t) for t in args.threads.split(",") if t]
        report(tok, args.rows, args.walk_steps or 128, threads, args.busy)
        return
    print(f"vocabulary: {tok.vocab_size} tokens; {args.rows} rows per step; median of {args.reps} runs")
    walked = (f" {args.rows} random paths x {args.walk_steps} steps µs/row | the last half µs/row |"
              if args.walk_steps else "")
    print(f"| kind | steps | cold µs/row | warm µs/row |{walked}")
    print("| --- | --- | --- | --- |" + (" --- | --- |" if walked else ""))
    for name, (rule, text) in kinds().items():
        if args.only and args.only not in name:
            continue
        runs = [measure(rule, text, tok, args.rows) for _ in range(args.reps)]
        cold = statistics.median(r[0] for r in runs)
        warm = statistics.median(r[1] for r in runs)
        walked = ""
        if args.walk_steps:
            every, late = walks(rule, tok, args.rows, args.walk_steps)
            walked = f" {every:,.1f} | {late:,.1f} |"
        print(f"| {name} | {runs[0][2]} | {cold:,.0f} | {warm:,.1f} |{walked}", flush=True)


if __name__ == "__main__":
    main()
