"""Issue 31 (a): the engine's host work per constrained token of a server-side LMQL template.

    python benchmarks/follow_costs.py [--tokenizer PATH] [--paths 20] [--repeat 2]

For the holes of ``constraint_loads.programs`` (128-token values), a ``MaskConstraint`` follows
values that grow by a random allowed token at every step (as a sampled run would; seeded): each
step the mask thread's ``fill`` (the row the engine applies) and, after the token, the engine
thread's ``events_after`` (the next step, forced tokens, the end). Prints µs per token of each,
the last of ``--repeat`` passes (the first fills the vocabulary's caches). The 50,257-token
byte-level BPE is ``mask_costs.tokenizer``'s (trained here once; nothing downloads).
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
            events, ends = constraint.events_after(seq, token, 0.0, {}, False)
            following += time.perf_counter() - started
            tokens += len(events)
            if ends:
                break
    return tokens / paths, filling / tokens * 1e6, following / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a tokenizer.json (default: a 50,257-token BPE trained here)")
    parser.add_argument("--paths", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from lmql_core.constraints.vocabulary import Vocabulary

    vocab = Vocabulary.of(tokenizer(args.tokenizer, 50257))
    vocab.prepare()
    print("| hole | tokens per value | fill µs/token | events_after µs/token |")
    print("| --- | ---: | ---: | ---: |")
    for name, rule in holes().items():
        for _ in range(args.repeat):
            per_value, fill, after = follow(rule, vocab, args.paths, random.Random(0))
        print(f"| {name} | {per_value:.1f} | {fill:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
