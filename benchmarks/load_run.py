"""One load run of ``lmtp_load.py``: the streams' requests drawn, sent to the chosen target
(LMTP socket, in-process or OpenAI's HTTP API) after a warm-up, and their times summarized."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from load_targets import LocalTarget, SocketTarget, StreamTimes, run_stream
from openai_target import OpenAITarget


def length_range(text: str) -> tuple[int, int]:
    """``"16"`` or ``"100-1024"`` (both ends included)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def draw_requests(args: argparse.Namespace, rng: random.Random, vocab: int, eos: Any,
                  count: int | None = None) -> list[dict[str, Any]]:
    prompt_lens, new_tokens = length_range(args.prompt_len), length_range(args.new_tokens)
    requests = []
    for _ in range(args.streams if count is None else count):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(*prompt_lens))]
        request: dict[str, Any] = {"model": args.model, "prompt": prompt}
        if args.score:
            request["scored"] = [rng.randrange(vocab) for _ in range(args.score)]
        else:
            request.update(max_tokens=rng.randint(*new_tokens), temperature=0.0, top_logprobs=1)
            if eos is not None:
                request["logit_bias"] = {str(eos): -100}
        requests.append(request)
    return requests


def prompt_rng(args: argparse.Namespace) -> random.Random:
    """Fresh prompts unless asked to repeat them (a seed)."""
    seed = 0 if args.repeat_prompts and args.seed is None else args.seed
    return random.Random(seed)  # None: seeded from the OS, different every run


async def run(args: argparse.Namespace, go: Any = None) -> dict[str, Any]:
    """``go``: awaited between the warm-up and the measured streams (a worker's start signal);
    with it, the streams' times come back instead of their summary."""
    if args.local:
        target: Any = LocalTarget(args.model, {"cuda": args.cuda, "dtype": args.dtype})
    elif args.openai:
        target = OpenAITarget(args.endpoint, keep_alive=not args.fresh_connections)
    else:
        target = SocketTarget(args.endpoint)
    async with target:
        info = await target.info(args.model)
        vocab = int(info.get("vocab_size") or args.vocab_size)
        eos = info.get("eos_token_id", args.eos_token_id)
        rng = prompt_rng(args)
        per_stream = args.requests_per_stream
        drawn = draw_requests(args, rng, vocab, eos, args.streams * per_stream)
        requests = [drawn[i * per_stream : (i + 1) * per_stream] for i in range(args.streams)]
        if args.warmup:  # prompts of their own: the measured ones must not be cached by it
            warmups = draw_requests(args, random.Random(rng.random()), vocab, eos)
            await asyncio.gather(*(run_stream(target, 10_000 + i, short(r), 0)
                                   for i, r in enumerate(warmups)))
        if go is not None:
            await go()
        started, cpu = time.perf_counter(), time.process_time()
        ids = range(args.first_stream, args.first_stream + len(requests))
        streams = await asyncio.gather(*(run_requests(target, i + 1, r, i * args.stagger_ms / 1000)
                                         for i, r in zip(ids, requests, strict=True)))
        cpu = time.process_time() - cpu
        if go is not None:
            return {"started": started, "cpu": cpu, "streams": [[s.sent, s.arrivals] for s in streams]}
        elapsed = max(s.arrivals[-1] for s in streams) - started
    return summary(args, streams, elapsed, cpu)


async def run_requests(target: Any, stream: int, requests: list[dict[str, Any]], delay: float) -> StreamTimes:
    """A stream's requests one after another (a closed loop): their tokens' times as one stream's
    (its TTFT the first request's; each next request's wait for its first token a gap)."""
    times = await run_stream(target, stream, requests[0], delay)
    for k, request in enumerate(requests[1:], 1):
        more = await run_stream(target, stream + 1_000_000 * k, request, 0)
        times.arrivals += more.arrivals
    return times


def short(request: dict[str, Any]) -> dict[str, Any]:
    """A warm-up request: 4 new tokens, or 4 scored tokens."""
    if "scored" in request:
        return dict(request, scored=request["scored"][:4])
    return dict(request, max_tokens=min(4, request["max_tokens"]))


def summary(args: argparse.Namespace, streams: list[StreamTimes], elapsed: float,
            cpu: float) -> dict[str, Any]:
    tokens = sum(len(s.arrivals) for s in streams)
    gaps = [g for s in streams for g in s.gaps()]
    return {
        "streams": args.streams, "prompt_len": args.prompt_len,
        "new_tokens": f"score {args.score}" if args.score else args.new_tokens,
        "stagger_ms": args.stagger_ms,
        "transport": "local" if args.local else "openai" if args.openai else "lmtp",
        "tokens": tokens, "seconds": round(elapsed, 3), "tok_per_s": round(tokens / elapsed, 1),
        "req_per_s": round(len(streams) * args.requests_per_stream / elapsed, 1),
        "requests_per_stream": args.requests_per_stream,
        "ttft_median_ms": round(1000 * statistics.median(s.ttft for s in streams), 1),
        "ttft_p90_ms": round(1000 * sorted(s.ttft for s in streams)[int(0.9 * (len(streams) - 1))], 1),
        "itl_median_ms": round(1000 * statistics.median(gaps), 2) if gaps else None,
        "itl_max_ms": round(1000 * max(gaps), 2) if gaps else None,
        "processes": args.processes, "driver_cpu_s": round(cpu, 3),
        **timeline(streams),
    }


def timeline(streams: list[StreamTimes]) -> dict[str, float]:
    """When, in ms from the first stream's request, the last request was sent, the last first
    token came, and the first and last streams ended: where a run's time goes beyond the steps."""
    start = min(s.sent for s in streams)

    def ms(t: float) -> float:
        return round(1000 * (t - start), 1)

    return {"last_sent_ms": ms(max(s.sent for s in streams)),
            "last_first_token_ms": ms(max(s.arrivals[0] for s in streams)),
            "first_end_ms": ms(min(s.arrivals[-1] for s in streams)),
            "last_end_ms": ms(max(s.arrivals[-1] for s in streams))}
