"""The event loop's own work for OpenAI's streaming completions, in one process (issue 29): N
streamed completions (``Completion.sse()``, as the server runs them) fed by a thread that posts
one engine step's events every STEP_MS through the shared ``Outbox``, as the engine thread does;
no engine, no sockets (the events' bytes are counted, not sent). Prints the loop thread's CPU
microseconds per token (``time.thread_time``), so a change to the delivery, the pacing or the
chunks' making can be timed apart from aiohttp and the kernel.

    python benchmarks/openai_loop_cost.py [--streams 64] [--tokens 128] [--step-ms 1.5] [--rounds 5]
        [--events-per-s 2000] [--tokenizer FOLDER_OR_NAME]

The defaults are the GPU benchmark's shape (64 streams x 128 tokens, steps of ~1.5 ms, the
server's default pacing: ~20 tokens an event), with gpt2-micro-50k's tokenizer (GPT-2's).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lmql_core.engine.sampling import ONLY_THE_CHOSEN
from lmql_core.engine.sequence import Finish, TokenEvent
from lmql_core.lmtp import wire
from lmql_core.lmtp.server.outbox import Outbox
from lmql_core.openai_compat.choices import Choice
from lmql_core.openai_compat.completion import Completion
from lmql_core.openai_compat.pacing import StreamPacer
from lmql_core.openai_compat.requests import completion_request

sys.path.insert(0, str(Path(__file__).resolve().parent))


def tokenizer(name: str) -> Any:
    from lmql_hf.loading.tokenizer import load_hf_tokenizer

    if name == "gpt2-micro-50k":
        from bench_models import bench_model

        name = str(bench_model(name).folder)
    return load_hf_tokenizer(name)


def completions(tok: Any, outbox: Outbox, pacer: StreamPacer, streams: int) -> list[Completion]:
    body = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 128, "stream": True, "logprobs": 0}
    made = []
    for _ in range(streams):
        completion = Completion(None, wire.Limits(), completion_request(body, 20), outbox, pacer)  # type: ignore[arg-type]
        completion.choices.append(Choice(0, tok, [], [], None, False, True))
        made.append(completion)
    return made


def engine(outbox: Outbox, sessions: list[Any], tokens: int, step_s: float, seed: int) -> None:
    """The engine thread's part: a step's event for every stream, every ``step_s``."""
    rng = random.Random(seed)
    for t in range(tokens):
        finish = Finish.LENGTH if t == tokens - 1 else None
        for session in sessions:
            outbox.post(session, [TokenEvent(0, rng.randrange(256, 50000), -1.25, finish, ONLY_THE_CHOSEN)])
        time.sleep(step_s)


async def one_round(tok: Any, args: argparse.Namespace) -> tuple[float, int, int]:
    loop = asyncio.get_running_loop()
    outbox, pacer = Outbox(loop), StreamPacer(args.events_per_s)
    made = completions(tok, outbox, pacer, args.streams)
    written = [0, 0]

    async def consume(completion: Completion) -> None:
        async for data in completion.sse():
            written[0] += len(data)
            written[1] += 1

    tasks = [loop.create_task(consume(c)) for c in made]
    await asyncio.sleep(0)
    thread = threading.Thread(target=engine, args=(outbox, [c.session for c in made], args.tokens,
                                                   args.step_ms / 1e3, 0))
    start = time.thread_time()
    thread.start()
    await asyncio.gather(*tasks)
    cpu = time.thread_time() - start
    thread.join()
    return cpu, written[0], written[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=1.5)
    parser.add_argument("--events-per-s", type=float, default=2000.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokenizer", default="gpt2-micro-50k")
    args = parser.parse_args()
    tok = tokenizer(args.tokenizer)
    results = [asyncio.run(one_round(tok, args)) for _ in range(args.rounds)]
    total = args.streams * args.tokens
    per_token = [1e6 * cpu / total for cpu, _, _ in results]
    print(f"loop CPU us/token: median {statistics.median(per_token):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in per_token)}); bytes {results[0][1]}, "
          f"writes {results[0][2]} ({total / results[0][2]:.1f} tokens a write)")


if __name__ == "__main__":
    main()
