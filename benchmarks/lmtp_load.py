"""LMTP load driver: N concurrent streams over one websocket; prints tok/s, TTFT and ITL.

    python benchmarks/lmtp_load.py --endpoint localhost:8080 --model lmql-tiny --streams 64 \
        --prompt-len 16 --new-tokens 128 [--stagger-ms 20] [--local] [--repeat-prompts]
    python benchmarks/lmtp_load.py ... --streams 256 --prompt-len 100-1024 --new-tokens 100-1024
    python benchmarks/lmtp_load.py ... --streams 64 --prompt-len 256 --score 16      (SCORE requests)
    python benchmarks/lmtp_load.py ... --openai      (the same requests through OpenAI's HTTP API)
    python benchmarks/lmtp_load.py ... --openai --processes 4   (the streams shared by 4 driver processes)

Every stream sends a random prompt and asks for exactly --new-tokens tokens (EOS is banned with
a -100 logit bias, which LMQL's server honours too); a range A-B draws each stream's length
uniformly from it. Prompts are drawn fresh for every run, so no prefix cache can help; with
--repeat-prompts (or --seed N) they are the same in every run. The warm-up requests (off with
--no-warmup) use prompts of their own. With --score N every stream is a SCORE of N random tokens
after its prompt instead, and req_per_s counts them. With --local the same requests go to an
in-process engine (`local:` transport) instead of a socket; with --openai, as streamed
`/v1/completions` requests on the same server (`openai_target.py`). With --processes N the
streams are split between N driver processes started together (`load_workers.py`), so that the
driver is not what limits the rate; driver_cpu_s is the drivers' CPU during the measured part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamTimes:
    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


class SocketTarget:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint if "://" in endpoint else f"ws://{endpoint}"
        self.queues: dict[int, asyncio.Queue[Any]] = {}

    async def __aenter__(self) -> SocketTarget:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.endpoint + "/", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            command, _, body = msg.data.partition(" ")
            now = time.perf_counter()
            for entry in json.loads(body):
                queue = self.queues.get(entry.get("stream_id"))
                if queue is not None:
                    queue.put_nowait((now, entry))

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.queues[payload["stream_id"]] = queue
        await self.ws.send_str(f"{command} {json.dumps(payload)}")
        return queue

    async def info(self, model: str) -> dict[str, Any]:
        queue = await self.send("MODEL_INFO", {"stream_id": 0, "model": model})
        info = (await queue.get())[1].get("model_info")
        return info if isinstance(info, dict) else {}  # LMQL 0.7.3 may answer a text while loading


class LocalTarget:
    """The same requests through lmql-core's in-process transport (``local:``, no socket)."""

    def __init__(self, model: str, loader_kwargs: dict[str, Any]) -> None:
        from lmql_core.lmtp.local import InProcessClient
        from lmql_core.loading.identifiers import parse_model_id

        self.client = InProcessClient.for_model(parse_model_id("local:" + model), **loader_kwargs)

    async def __aenter__(self) -> LocalTarget:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def send(self, command: str, payload: dict[str, Any]) -> asyncio.Queue[Any]:
        from lmql_core.lmtp.client.loop import client_loop

        queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def pump() -> None:  # runs on the client loop, like every lmql.model() call
            try:
                async for entry in self.client.request(command, payload):
                    loop.call_soon_threadsafe(queue.put_nowait, (time.perf_counter(), entry))
            except Exception as e:
                loop.call_soon_threadsafe(queue.put_nowait, (time.perf_counter(), {"error": str(e)}))

        asyncio.run_coroutine_threadsafe(pump(), client_loop())
        return queue

    async def info(self, model: str) -> dict[str, Any]:
        queue = await self.send("MODEL_INFO", {"model": model})
        return (await queue.get())[1]["msg"].get("model_info", {})


async def run_stream(target: Any, stream_id: int, request: dict[str, Any], delay: float) -> StreamTimes:
    await asyncio.sleep(delay)
    times = StreamTimes(sent=time.perf_counter())
    command = "SCORE" if "scored" in request else "GENERATE"
    expected = len(request["scored"]) if command == "SCORE" else request["max_tokens"]
    queue = await target.send(command, dict(request, stream_id=stream_id))
    while True:
        arrived, entry = await queue.get()
        if "error" in entry:
            raise RuntimeError(entry["error"])
        times.arrivals.append(arrived)
        if entry.get("finish_reason") is not None or len(times.arrivals) >= expected:
            return times


def length_range(text: str) -> tuple[int, int]:
    """``"16"`` or ``"100-1024"`` (both ends included)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def draw_requests(args: argparse.Namespace, rng: random.Random, vocab: int, eos: Any) -> list[dict[str, Any]]:
    prompt_lens, new_tokens = length_range(args.prompt_len), length_range(args.new_tokens)
    requests = []
    for _ in range(args.streams):
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
        from openai_target import OpenAITarget

        target = OpenAITarget(args.endpoint)
    else:
        target = SocketTarget(args.endpoint)
    async with target:
        info = await target.info(args.model)
        vocab = int(info.get("vocab_size") or args.vocab_size)
        eos = info.get("eos_token_id", args.eos_token_id)
        rng = prompt_rng(args)
        requests = draw_requests(args, rng, vocab, eos)
        if args.warmup:  # prompts of their own: the measured ones must not be cached by it
            warmups = draw_requests(args, random.Random(rng.random()), vocab, eos)
            await asyncio.gather(*(run_stream(target, 10_000 + i, short(r), 0)
                                   for i, r in enumerate(warmups)))
        if go is not None:
            await go()
        started, cpu = time.perf_counter(), time.process_time()
        ids = range(args.first_stream, args.first_stream + len(requests))
        streams = await asyncio.gather(*(run_stream(target, i + 1, r, i * args.stagger_ms / 1000)
                                         for i, r in zip(ids, requests, strict=True)))
        cpu = time.process_time() - cpu
        if go is not None:
            return {"started": started, "cpu": cpu, "streams": [[s.sent, s.arrivals] for s in streams]}
        elapsed = max(s.arrivals[-1] for s in streams) - started
    return summary(args, streams, elapsed, cpu)


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
        "req_per_s": round(len(streams) / elapsed, 1),
        "ttft_median_ms": round(1000 * statistics.median(s.ttft for s in streams), 1),
        "ttft_p90_ms": round(1000 * sorted(s.ttft for s in streams)[int(0.9 * (len(streams) - 1))], 1),
        "itl_median_ms": round(1000 * statistics.median(gaps), 2) if gaps else None,
        "itl_max_ms": round(1000 * max(gaps), 2) if gaps else None,
        "processes": args.processes, "driver_cpu_s": round(cpu, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:8080")
    parser.add_argument("--model", default="lmql-tiny")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prompt-len", default="16", help="N, or A-B: each stream's drawn uniformly")
    parser.add_argument("--new-tokens", default="128", help="N, or A-B: each stream's drawn uniformly")
    parser.add_argument("--score", type=int, default=0, metavar="N",
                        help="SCORE requests of N random tokens after the prompt instead of GENERATE")
    parser.add_argument("--stagger-ms", type=float, default=0.0, help="delay between stream starts")
    parser.add_argument("--local", action="store_true", help="in-process engine instead of a socket")
    parser.add_argument("--openai", action="store_true", help="OpenAI's HTTP API on the same server")
    parser.add_argument("--cuda", action="store_true", help="with --local: load the model on the GPU")
    parser.add_argument("--dtype", help="with --local: the weights' dtype (float16, ...)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--vocab-size", type=int, default=50257, help="when MODEL_INFO does not say")
    parser.add_argument("--eos-token-id", type=int, help="when MODEL_INFO does not say (LMQL 0.7)")
    parser.add_argument("--seed", type=int, help="draw the prompts from this seed (the same every run)")
    parser.add_argument("--repeat-prompts", action="store_true",
                        help="the same prompts in every run (seed 0 unless --seed); default: fresh ones")
    parser.add_argument("--processes", type=int, default=1, help="driver processes sharing the streams")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --processes
    parser.add_argument("--first-stream", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--timeout", type=float, help="seconds for the whole run (TimeoutError after)")
    return parser.parse_args(argv)


async def run_within(args: argparse.Namespace) -> dict[str, Any]:
    return await asyncio.wait_for(run(args), args.timeout)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker or args.processes > 1:
        import load_workers

        if args.worker:
            return load_workers.worker(args)
        streams, elapsed, cpu = load_workers.run_workers(args, sys.argv[1:] if argv is None else argv)
        result = summary(args, streams, elapsed, cpu)
    else:
        result = asyncio.run(run_within(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
