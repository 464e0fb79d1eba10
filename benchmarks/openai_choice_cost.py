"""The OpenAI server's own work per generated token, in one process (no engine, no sockets):
one streamed completion taking 128 token events of the engine (``Completion._receive``, as the
outbox hands them over) and writing its stream's deltas (text, log-probs: ``_delta_json``) with an
event every N tokens, as a paced stream does (issue 29). The garbage collector's collections
during the runs are counted too.

    python benchmarks/openai_choice_cost.py [--tokenizer config-only|lmql-tiny] [--every 1 20]

``config-only``: the tokenizer transformers makes for a model folder with a config and no
vocabulary (the GPU benchmark's gpt2-medium: one token, every other id decodes to nothing);
``lmql-tiny``: a real byte-level BPE. Prints microseconds per token.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import tempfile
import time
from typing import Any

from lmql_core.engine.sampling import ONLY_THE_CHOSEN
from lmql_core.engine.sequence import TokenEvent
from lmql_core.lmtp import wire
from lmql_core.openai_compat.choices import Choice
from lmql_core.openai_compat.completion import Completion
from lmql_core.openai_compat.requests import completion_request

BODY = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 128, "stream": True, "logprobs": 1}


def tokenizer(name: str) -> Any:
    from lmql_hf.loading.tokenizer import load_hf_tokenizer

    if name == "lmql-tiny":
        return load_hf_tokenizer("lmql-tiny")
    from transformers import GPT2Config

    folder = tempfile.mkdtemp()
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(folder)
    return load_hf_tokenizer(folder)


def one_stream(tok: Any, events: list[TokenEvent], every: int) -> None:
    completion = Completion(None, wire.Limits(), completion_request(BODY, 20), None, None)  # type: ignore[arg-type]
    choice, offsets = Choice(0, tok, [], [], None), [0]
    completion.choices.append(choice)
    for start in range(0, len(events), every):
        completion._receive("TOKEN", events[start : start + every])
        completion._delta_json(choice, offsets)


def timed(tok: Any, events: list[TokenEvent], every: int, repeat: int) -> tuple[float, int]:
    """The best of 5 runs' seconds for ``repeat`` streams, and the collections in the last run."""
    async def run() -> tuple[float, int]:
        best, collections = float("inf"), 0
        for _ in range(5):
            before = sum(s["collections"] for s in gc.get_stats())
            start = time.perf_counter()
            for _ in range(repeat):
                one_stream(tok, events, every)
            best = min(best, time.perf_counter() - start)
            collections = sum(s["collections"] for s in gc.get_stats()) - before
        return best, collections

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="config-only", choices=["config-only", "lmql-tiny"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeat", type=int, default=64)
    args = parser.parse_args()
    tok, rng = tokenizer(args.tokenizer), random.Random(0)
    events = [TokenEvent(0, rng.randrange(3, 2000), -1.5, None, ONLY_THE_CHOSEN) for _ in range(128)]
    for every in args.every:
        seconds, collections = timed(tok, events, every, args.repeat)
        per_token = 1e6 * seconds / args.repeat / len(events)
        print(f"{args.tokenizer}: an event every {every} tokens: {per_token:.2f} us/token, "
              f"{collections} collections per {args.repeat * len(events)} tokens")


if __name__ == "__main__":
    main()
