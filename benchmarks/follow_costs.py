"""Issue 31 (a): the engine's host work per constrained token of a server-side LMQL template.

    python benchmarks/follow_costs.py [--tokenizer PATH] [--paths 20] [--repeat 2] [--batch 64]

For the holes of ``constraint_loads.programs`` (128-token values), a ``MaskConstraint`` follows
values that grow by a random allowed token at every step (as a sampled run would; seeded): each
step the mask thread's ``fill`` (the row the engine applies) and, after the token, the engine
thread's ``events_after`` (the next step, forced tokens, the end). Prints µs per token of each,
the last of ``--repeat`` passes (the first fills the vocabulary's caches). The 50,257-token
byte-level BPE is ``mask_costs.tokenizer``'s (trained here once; nothing downloads).

``--batch N``: then the engine thread's whole constraint work a step for N rows, the holes in
turn (a row that ends starts its hole again): the step's masks (``MaskFiller.start`` and ``wait``,
as a chained step takes them) and each row's ``events_after``, µs a step (what a GPU step waits
for on the host: issue 31 (a)'s "wait" and "following").
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from constraint_loads import COLORS, DATE  # noqa: E402
from mask_costs import tokenizer  # noqa: E402


def holes() -> dict[str, Any]:
    from lmql_core.constraints import kinds as k

    return {"WHY/NOTES/BIO: len(TOKENS) < 128": k.Count("<", 128),
            "SUMMARY: len < 512": k.Count("<", 512, tokens=False),
            "DATE: REGEX": k.Regex(DATE),
            "AGE: INT and len(TOKENS) < 4": k.And([k.IsInt(), k.Count("<", 4)]),
            "NAME: STOPS_AT and len(TOKENS) < 8": k.And([k.StopsAt("\n"), k.Count("<", 8)]),
            "C0: in 20 options": k.OneOf(COLORS)}


def follow(rule: Any, vocab: Any, paths: int, rng: random.Random) -> tuple[float, float, float]:
    """(tokens per value, fill µs per token, events_after µs per token) over ``paths`` values."""
    import numpy as np

    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words
    from lmql_core.engine.sequence import SamplingParams, Sequence

    words = mask_words(vocab.size, vocab)
    filling = following = 0.0
    tokens = 0
    for _ in range(paths):
        constraint = MaskConstraint(rule, vocab, words)
        seq = Sequence(0, [0], SamplingParams(max_tokens=200), lambda events: None)
        seq.max_generated = 200
        row = np.zeros(words, dtype=np.int32)
        while True:
            started = time.perf_counter()
            constraint.fill(list(seq.generated), row)
            filling += time.perf_counter() - started
            allowed = np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab.size])
            token = int(allowed[rng.randrange(len(allowed))]) if len(allowed) else vocab.eos
            if token == vocab.eos:
                break
            seq.generated.append(token)
            started = time.perf_counter()
            events, ends = constraint.events_after(seq, token, 0.0, {}, None)
            following += time.perf_counter() - started
            tokens += len(events)
            if ends:
                break
    return tokens / paths, filling / tokens * 1e6, following / tokens * 1e6


def batch_steps(vocab: Any, rows: int, steps: int, rng: random.Random) -> tuple[float, float, int]:
    """(µs a step filling masks, µs a step following, tokens) over ``steps`` steps of ``rows`` rows."""
    import numpy as np

    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words
    from lmql_core.engine.mask_filler import MaskFiller
    from lmql_core.engine.sequence import SamplingParams, Sequence, Status
    from lmql_core.engine.steps import EngineStats

    rules = list(holes().values())
    words = mask_words(vocab.size, vocab)

    def fresh(i: int) -> Sequence:
        constraint = MaskConstraint(rules[i % len(rules)], vocab, words)
        seq = Sequence(i, [0], SamplingParams(max_tokens=200, constraint=constraint), lambda events: None,
                       max_generated=200)
        seq.status = Status.RUNNING
        return seq

    seqs = [fresh(i) for i in range(rows)]
    filler = MaskFiller(EngineStats())
    filling = following = 0.0
    tokens = 0
    for _ in range(steps):
        started = time.perf_counter()
        try:
            pending = filler.start(seqs, overlapped=False)
        except TypeError:  # a tree from before ``overlapped`` (for comparisons)
            pending = filler.start(seqs)
        batch = filler.wait(pending, seqs) if pending is not None else None
        filling += time.perf_counter() - started
        masked = dict(zip(batch.rows, batch.bits, strict=True)) if batch is not None else {}
        picks = []
        for r in range(len(seqs)):
            bits = masked.get(r)
            allowed = (np.flatnonzero(np.unpackbits(bits.view(np.uint8), bitorder="little")[:vocab.size])
                       if bits is not None else None)
            picks.append(rng.randrange(vocab.size - 1) if allowed is None else
                         int(allowed[rng.randrange(len(allowed))]) if len(allowed) else vocab.eos)
        started = time.perf_counter()
        for r, (seq, token) in enumerate(zip(seqs, picks, strict=True)):
            if token == vocab.eos:
                seqs[r] = fresh(seq.seq_id)
                continue
            seq.generated.append(token)
            constraint = seq.params.constraint
            if len(seq.generated) < getattr(constraint, "open_below", 0):  # as the engine's loop
                tokens += 1
                continue
            events, ends = constraint.events_after(seq, token, 0.0, {}, None)
            tokens += len(events)
            if ends:
                seqs[r] = fresh(seq.seq_id)
        following += time.perf_counter() - started
    filler.close()
    return filling / steps * 1e6, following / steps * 1e6, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a tokenizer.json (default: a 50,257-token BPE trained here)")
    parser.add_argument("--paths", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch", type=int, help="rows a step: time whole steps instead")
    parser.add_argument("--steps", type=int, default=300, help="steps a pass, with --batch")
    args = parser.parse_args()
    from lmql_core.constraints.vocabulary import Vocabulary

    vocab = Vocabulary.of(tokenizer(args.tokenizer, 50257))
    vocab.prepare()
    if args.batch:
        print("| rows | steps | tokens | masks µs/step | following µs/step | sum µs/step |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for _ in range(args.repeat):
            fill, follow_us, tokens = batch_steps(vocab, args.batch, args.steps, random.Random(0))
        print(f"| {args.batch} | {args.steps} | {tokens} | {fill:.0f} | {follow_us:.0f} "
              f"| {fill + follow_us:.0f} |")
        return
    print("| hole | tokens per value | fill µs/token | events_after µs/token |")
    print("| --- | ---: | ---: | ---: |")
    for name, rule in holes().items():
        for _ in range(args.repeat):
            per_value, fill, after = follow(rule, vocab, args.paths, random.Random(0))
        print(f"| {name} | {per_value:.1f} | {fill:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
