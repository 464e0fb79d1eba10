"""The engine's host cost per step at a batch of 256, without a model: the scheduler on its own
(admitting, churn, preemption under contention), then the whole engine on the builtin random
backend (a small vocabulary, its forward pass timed and left out), so what is measured is the
host's work the GPU would wait for.

    python benchmarks/scheduler_cost.py [--max-batch 256] [--clients 64] [--repeats 5]
        [--engine-steps 300] [--part scheduler|engine|all] [--profile] [--breakdown]

Each scheduler point is the median of ``--repeats`` runs; ``--profile`` prints cProfile's top
functions of the engine run (the engine thread's); ``--breakdown`` times the engine's parts.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from lmql_core.base.backend import StepInput, StepOutput
from lmql_core.builtin.random_backend import RandomBackend
from lmql_core.engine.engine import Engine
from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Finish, SamplingParams, Sequence, TokenEvent

PROMPT = list(range(1, 17))  # 16 tokens: 256 prompts fit one step's token budget


def client() -> Callable[[list[TokenEvent]], None]:
    def sink(events: list[TokenEvent]) -> None:
        pass
    return sink


def request(sink: Any, max_tokens: int = 64) -> Sequence:
    return Sequence(None, list(PROMPT), SamplingParams(max_tokens=max_tokens), sink)


def feed(chunks: list[Any]) -> None:
    """What the engine does with a step's chunks: count them fed, sample where a prompt ended."""
    for chunk in chunks:
        chunk.seq.num_fed += len(chunk.tokens)
        if not chunk.seq.unfed:
            chunk.seq.generated.append(7)


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = work()
    return time.perf_counter() - began, result


def admission(max_batch: int, clients: int, per_client: int) -> tuple[float, int]:
    """An idle scheduler with ``clients`` x ``per_client`` waiting: the first step's preempt and
    schedule. (seconds, sequences admitted)"""
    scheduler = Scheduler(max_batch=max_batch)
    sinks = [client() for _ in range(clients)]
    for _ in range(per_client):
        for sink in sinks:
            scheduler.add(request(sink))
    seconds, chunks = timed(lambda: (scheduler.preempt(), scheduler.schedule())[1])
    return seconds, len(chunks)


def churn(max_batch: int, clients: int, steps: int, turnover: int) -> float:
    """A full batch of ``clients``' sequences, ``turnover`` of them ending and as many arriving
    (from random clients, with more queued than fit) every step: seconds of scheduler calls a step."""
    rng = random.Random(0)
    scheduler = Scheduler(max_batch=max_batch)
    sinks = [client() for _ in range(clients)]
    for i in range(max_batch + 2 * clients):
        scheduler.add(request(sinks[i % clients]))
    feed(scheduler.schedule())
    spent = 0.0
    for _ in range(steps):
        ending = rng.sample(scheduler.running, min(turnover, len(scheduler.running)))
        arriving = [request(rng.choice(sinks)) for _ in range(turnover)]
        began = time.perf_counter()
        scheduler.finish(ending)
        for seq in arriving:
            scheduler.add(seq)
        scheduler.preempt()
        chunks = scheduler.schedule()
        spent += time.perf_counter() - began
        feed(chunks)
    return spent / steps


def contention(max_batch: int, newcomers: int) -> tuple[float, int]:
    """One client runs the whole batch; ``newcomers`` clients arrive with two requests each: the
    preemption that makes their room. (seconds, sequences preempted)"""
    scheduler = Scheduler(max_batch=max_batch)
    hog = client()
    for _ in range(max_batch):
        scheduler.add(request(hog))
    feed(scheduler.schedule())
    for _ in range(newcomers):
        sink = client()
        scheduler.add(request(sink))
        scheduler.add(request(sink))
    seconds, freed = timed(scheduler.preempt)
    return seconds, len(freed)


def median_of(repeats: int, work: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    runs = [work() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), runs[0][1]


def scheduler_points(args: argparse.Namespace) -> None:
    n = args.max_batch
    print(f"## Scheduler alone, max_batch {n} (median of {args.repeats})\n")
    print("| point | µs | per sequence |\n| --- | ---: | ---: |")
    for clients, per in [(1, 2 * n), (args.clients, 2 * n // args.clients), (2 * n, 1)]:
        seconds, admitted = median_of(args.repeats, lambda c=clients, p=per: admission(n, c, p))
        print(f"| admit {admitted} of {clients * per} waiting, {clients} clients | {seconds * 1e6:,.0f} "
              f"| {seconds * 1e6 / max(admitted, 1):.2f} |")
    for clients, turnover in [(args.clients, max(1, n // 32)), (args.clients, max(1, n // 8))]:
        seconds = statistics.median(churn(n, clients, 200, turnover) for _ in range(args.repeats))
        print(f"| churn: {turnover} end and {turnover} arrive a step, {clients} clients (per step) "
              f"| {seconds * 1e6:,.0f} | {seconds * 1e6 / turnover:.2f} |")
    for newcomers in [n // 8, n // 2 - 1]:
        seconds, freed = median_of(args.repeats, lambda k=newcomers: contention(n, k))
        print(f"| preempt {freed} of one client's {n} for {newcomers} newcomers | {seconds * 1e6:,.0f} "
              f"| {seconds * 1e6 / max(freed, 1):.2f} |")
    print()


class TimedRandomBackend(RandomBackend):
    """The random model, its forward pass timed (the model's share, left out of host time)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.forward_seconds = 0.0

    def forward(self, batch: list[StepInput]) -> StepOutput:
        began = time.perf_counter()
        try:
            return super().forward(batch)
        finally:
            self.forward_seconds += time.perf_counter() - began


class Streams:
    """Clients that keep ``live[i]`` streams going each until ``total`` ended: each stream that
    ends is followed by a new one of its client's, so sequences leave and join every step."""

    def __init__(self, engine: Engine, live: list[int], total: int, seed: int = 0) -> None:
        self.engine, self.rng, self.total = engine, random.Random(seed), total
        self.started = itertools.count()
        self.ended = 0
        self.done = threading.Event()
        # drawn beforehand: the sinks run on the engine thread, whose time is measured
        self.drawn = [self._draw() for _ in range(total + sum(live))]
        sinks = [self._sink() for _ in live]
        self.first = [self._request(sink) for sink, count in zip(sinks, live, strict=True)
                      for _ in range(count)]

    def _draw(self) -> tuple[list[int], int]:
        return [self.rng.randrange(1, 250) for _ in range(self.rng.randint(8, 64))], self.rng.randint(16, 96)

    def _request(self, sink: Any) -> Sequence:
        prompt, max_tokens = self.drawn.pop()
        return Sequence(next(self.started), prompt, SamplingParams(max_tokens=max_tokens), sink)

    def _sink(self) -> Callable[[list[TokenEvent]], None]:
        def sink(events: list[TokenEvent]) -> None:
            for event in events:
                if event.finish_reason is Finish.EOS or event.finish_reason is Finish.LENGTH or event.error:
                    self.ended += 1
                    if self.ended >= self.total:
                        self.done.set()
                    else:
                        self.engine.submit(self._request(sink))
        return sink

    def run(self) -> None:
        for seq in self.first:
            self.engine.submit(seq)


def engine_points(args: argparse.Namespace) -> None:
    n, clients = args.max_batch, args.clients
    print(f"## Engine on the random backend (vocabulary 256), max_batch {n}, streams replaced as they end\n")
    print("| point | steps | preempted | forward s | host µs a step | host µs a token |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    engine_point(args, f"{clients} clients x {n // clients} streams", [n // clients] * clients)
    small = clients // 2
    engine_point(args, f"1 client x {2 * n} streams + {small} x 4", [2 * n] + [4] * small)
    print()


# the engine's parts timed by --breakdown: (module, owner, attribute); each runs once a step
STAGES = [
    ("lmql_core.engine.scheduler", "Scheduler", "preempt"),
    ("lmql_core.engine.scheduler", "Scheduler", "schedule"),
    ("lmql_core.engine.launch", "StepLauncher", "launch"),
    ("lmql_core.engine.launch", "StepLauncher", "plan_for"),
    ("lmql_core.engine.launch", None, "launch_sampling"),
    ("lmql_core.engine.collect", "Collector", "collect"),
    ("lmql_core.engine.collect", "Collector", "_emit_samples"),
    ("lmql_core.engine.collect", None, "collect_sampling"),
    ("lmql_core.engine.engine", None, "deliver_all"),
]


def time_stages() -> dict[str, float]:
    """Wrap each of STAGES in a timer (for the rest of the process): seconds spent by name."""
    import importlib

    spent: dict[str, float] = {}
    for module_name, owner_name, attribute in STAGES:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        name = f"{owner_name or module_name.rsplit('.', 1)[1]}.{attribute}"
        spent[name] = 0.0
        setattr(owner, attribute, _timer(getattr(owner, attribute), name, spent))
    return spent


def _timer(function: Callable[..., Any], name: str, spent: dict[str, float]) -> Callable[..., Any]:
    def timed_call(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - began
    return timed_call


def engine_point(args: argparse.Namespace, name: str, live: list[int]) -> None:
    """The engine with ``live[i]`` streams of client i at all times: host µs a step."""
    backend = TimedRandomBackend(vocab_size=256, eos_token_id=255)
    for stage in args.spent or {}:  # the scheduler's points called some of them
        args.spent[stage] = 0.0
    profiler = ProfiledEngine.profiler = cProfile.Profile() if args.profile else None
    engine = ProfiledEngine(backend, max_batch=args.max_batch)
    streams = Streams(engine, live, total=args.max_batch * args.engine_steps // 56)  # ~56 tokens a stream
    streams.run()
    assert streams.done.wait(600), "the streams did not end"
    stats = engine.stats
    host = stats.busy_seconds - backend.forward_seconds
    engine.stop()
    print(f"| {name} | {stats.steps} | {stats.sequences_preempted} | {backend.forward_seconds:.2f} "
          f"| {host / stats.steps * 1e6:,.0f} | {host / max(stats.tokens_generated, 1) * 1e6:.1f} |")
    if args.spent is not None:
        args.spent["RandomBackend.forward (left out)"] = backend.forward_seconds
        print("\n| stage (cumulative: launch holds forward, sampling, plan) | µs a step |\n| --- | ---: |")
        for stage, seconds in args.spent.items():
            print(f"| {stage} | {seconds / stats.steps * 1e6:,.0f} |")
        print()
    if profiler:
        profiler.disable()
        for order in ("tottime", "cumulative"):
            pstats.Stats(profiler).sort_stats(order).print_stats(r"lmql_core|numpy|builtins", 30)



class ProfiledEngine(Engine):
    """The engine, its thread run under ``profiler`` (cProfile sees only the thread it runs on)."""

    profiler: cProfile.Profile | None = None

    def _serve(self) -> None:
        if self.profiler:
            self.profiler.enable()
        super()._serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine-steps", type=int, default=300)
    parser.add_argument("--part", choices=["scheduler", "engine", "all"], default="all")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="time the engine's parts a step")
    args = parser.parse_args()
    args.spent = time_stages() if args.breakdown else None
    if args.part in ("scheduler", "all"):
        scheduler_points(args)
    if args.part in ("engine", "all"):
        engine_points(args)


if __name__ == "__main__":
    main()
