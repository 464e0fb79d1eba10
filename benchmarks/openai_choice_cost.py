"""The OpenAI server's own work per generated token, in one process (no engine, no sockets):
one choice taking 128 token events of the engine and writing its stream's deltas (text,
log-probs) with an event every N tokens, as a paced stream does (issue 29).

    python benchmarks/openai_choice_cost.py [--tokenizer config-only|lmql-tiny] [--every 1 20]

``config-only``: the tokenizer transformers makes for a model folder with a config and no
vocabulary (the GPU benchmark's gpt2-medium: one token, every other id decodes to nothing);
``lmql-tiny``: a real byte-level BPE. Prints microseconds per token.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import timeit
from typing import Any

from lmql_core.engine.sampling import ONLY_THE_CHOSEN
from lmql_core.engine.sequence import TokenEvent
from lmql_core.openai_compat.choices import Choice, completion_logprobs, delta_json


def tokenizer(name: str) -> Any:
    from lmql_hf.loading.tokenizer import load_hf_tokenizer

    if name == "lmql-tiny":
        return load_hf_tokenizer("lmql-tiny")
    from transformers import GPT2Config

    folder = tempfile.mkdtemp()
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(folder)
    return load_hf_tokenizer(folder)


def one_stream(tok: Any, events: list[TokenEvent], every: int) -> None:
    choice, offset = Choice(0, tok, [], [], None), 0
    for i, event in enumerate(events):
        choice.add_event(event, None)
        if (i + 1) % every == 0:
            if hasattr(choice, "settle"):  # servers before the events were taken in batches
                choice.settle()
            text, items = choice.releasable_text(), choice.new_logprobs()
            delta_json({"index": 0, "text": text, "logprobs": completion_logprobs(items, offset),
                        "finish_reason": None})
            offset += sum(item.length for item in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="config-only", choices=["config-only", "lmql-tiny"])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    tok, rng = tokenizer(args.tokenizer), random.Random(0)
    events = [TokenEvent(0, rng.randrange(3, 2000), -1.5, None, ONLY_THE_CHOSEN) for _ in range(128)]
    for every in args.every:
        seconds = timeit.timeit(lambda n=every: one_stream(tok, events, n), number=args.repeat)  # type: ignore[misc]
        per_token = 1e6 * seconds / args.repeat / len(events)
        print(f"{args.tokenizer}: an event every {every} tokens: {per_token:.1f} us/token")


if __name__ == "__main__":
    main()
