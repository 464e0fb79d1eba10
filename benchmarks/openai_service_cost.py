"""What starting one OpenAI completion costs the server's own code, without HTTP (issue 29): bursts
of 64 ``/v1/completions`` bodies (16 fresh prompt tokens, 128 new tokens, streamed) handed to
``OpenAIService.completion`` on one event loop, as the HTTP handler does once it has the body;
prints the loop thread's CPU (``time.thread_time``) per request, median (min, max) over the bursts.

    python benchmarks/openai_service_cost.py [--model random] [--bursts 20]

Beside ``openai_request_cost.py`` (the loop's CPU for a whole request through aiohttp and the
socket), the difference is aiohttp's and the kernel's part of a request.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from lmql_core.lmtp import wire
from lmql_core.loading.model_host import ModelHost, load_model, parse_model_id
from lmql_core.openai_compat.service import OpenAIService

BURST = 64


def body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": [random.randrange(10, 1000) for _ in range(16)],
            "max_tokens": 128, "stream": True, "temperature": 0}


async def bursts(host: ModelHost, model: str, count: int) -> list[float]:
    """Loop CPU seconds per request, one number a burst (the streams are closed after each)."""
    service = OpenAIService(host, wire.Limits())
    per_request = []
    for _ in range(count):
        bodies = [body(model) for _ in range(BURST)]
        started = time.thread_time()
        completions = [await service.completion(b, chat=False) for b in bodies]
        per_request.append((time.thread_time() - started) / BURST)
        for completion in completions:
            completion.close()
        await asyncio.sleep(0.1)  # the engine drops the closed streams
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random", help="a model identifier (default: the random backend)")
    parser.add_argument("--bursts", type=int, default=20)
    args = parser.parse_args()
    loaded = load_model(parse_model_id(args.model))
    host = ModelHost()
    host.add(loaded)
    try:
        costs = asyncio.run(bursts(host, loaded.model_id.served_name, args.bursts + 1))[1:]  # first: warm-up
    finally:
        loaded.engine.stop()
    micro = [1e6 * c for c in costs]
    print(f"OpenAIService.completion: loop CPU us/request median {statistics.median(micro):.1f} "
          f"(min {min(micro):.1f}, max {max(micro):.1f}) over {args.bursts} bursts of {BURST}")


if __name__ == "__main__":
    main()
