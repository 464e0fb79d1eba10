"""What a stream with a slow constraint costs the others: free streams' gaps between tokens while
one stream follows a REGEX whose states are all new to the server (each state's first mask a
match per token group over the 50,257-token vocabulary: milliseconds).

    python benchmarks/slow_mask_stall.py [--free 8] [--tokens 64] [--pattern "[a-z ]{1,200}\\."]

In one process, on the CPU, with ``bench_models``' gpt2-micro-50k (built here once; nothing
downloads): ``--free`` streams of ``--tokens`` tokens (the end banned) beside one stream under
``REGEX(X, pattern)`` (an LMQL kinds tree, as a template's hole has it), all submitted together.
Prints the free streams' longest and median gaps between two of their tokens, the constrained
stream's tokens and time, and the engine's holds (``engine/holds.py``; absent in trees from before
them: every state computed on the engine thread then). Compare trees with PYTHONPATH.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--free", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pattern", default=r"[a-z ]{1,200}\.")
    args = parser.parse_args()

    from lmql_core.constraints import kinds
    from lmql_core.constraints.vocabulary import Vocabulary
    from lmql_core.engine.engine import Engine
    from lmql_core.engine.mask_constraint import MaskConstraint, mask_words
    from lmql_core.engine.sequence import SamplingParams, Sequence, TokenEvent
    from lmql_core.loading.tokenizer import JsonTokenizer
    from lmql_hf.backend import HFBackend

    model = bench_model("gpt2-micro-50k")
    tokenizer = JsonTokenizer.from_file(str(model.folder / "tokenizer.json"))
    vocab = Vocabulary.of(tokenizer)
    vocab.prepare()
    engine = Engine(HFBackend(str(model.folder)))
    eos = engine.backend.eos_token_id
    arrivals: dict[Any, list[float]] = {}
    left = threading.Semaphore(0)

    def sink(events: list[TokenEvent]) -> None:
        now = time.perf_counter()
        for e in events:
            arrivals.setdefault(e.stream_id, []).append(now)
            if e.finish_reason is not None or e.error is not None:
                left.release()

    prompt = tokenizer.encode("The answer is")
    words = mask_words(engine.backend.vocab_size, vocab)
    constraint = MaskConstraint(kinds.Regex(args.pattern), vocab, words)
    started = time.perf_counter()
    constrained = SamplingParams(max_tokens=args.tokens, constraint=constraint)
    engine.submit(Sequence("regex", prompt, constrained, sink))
    for i in range(args.free):
        free = SamplingParams(max_tokens=args.tokens, logit_bias={eos: -100.0})
        engine.submit(Sequence(i, prompt, free, sink))
    for _ in range(args.free + 1):
        left.acquire()
    gaps = [b - a for i in range(args.free)
            for a, b in zip(arrivals[i], arrivals[i][1:], strict=False)] or [0.0]
    regex_done = arrivals["regex"][-1] - started
    print("| free streams | longest gap ms | median gap ms | REGEX tokens | REGEX s | holds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.free} | {max(gaps) * 1e3:.1f} | {statistics.median(gaps) * 1e3:.2f} "
          f"| {len(arrivals['regex'])} | {regex_done:.2f} | {getattr(engine.stats, 'sequences_held', '-')} |")
    engine.stop()


if __name__ == "__main__":
    main()
