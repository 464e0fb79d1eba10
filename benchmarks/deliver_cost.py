"""The engine thread's cost of handing one step's events to N sessions that share an outbox
(OpenAI's requests: a session each, one outbox a loop), together (``deliver_all`` ->
``Outbox.post_many``) and one sink at a time (one post a session, as before).

    python benchmarks/deliver_cost.py [--sessions 64] [--steps 80] [--repeats 20]

Each session gets one event a step and defers (a paced stream between its events), so the loop
is not woken; every ``--steps`` steps the sessions take what waited. Prints the best µs a step.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from lmql_core.engine.endings import deliver_all
from lmql_core.engine.sequence import TokenEvent
from lmql_core.lmtp.server.outbox import Outbox, OutboxSink


class PacedSession:
    defers, closed = True, False

    def send_events(self, events: list[TokenEvent]) -> None:
        pass


def one_at_a_time(events: dict[Any, list[TokenEvent]]) -> None:
    for sink, batch in events.items():
        sink(batch)


def best_step_seconds(deliver: Callable[[dict[Any, list[TokenEvent]]], None], args: argparse.Namespace,
                      outbox: Outbox, sessions: list[PacedSession]) -> float:
    events = {OutboxSink(outbox, s): [TokenEvent(i, 5, -0.1)] for i, s in enumerate(sessions)}
    best = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            deliver(events)
        best = min(best, (time.perf_counter() - started) / args.steps)
        for session in sessions:
            outbox.take(session)
    return best


async def run(args: argparse.Namespace) -> None:
    outbox = Outbox(asyncio.get_running_loop())
    sessions = [PacedSession() for _ in range(args.sessions)]
    for name, deliver in (("one sink at a time", one_at_a_time), ("together (deliver_all)", deliver_all)):
        seconds = best_step_seconds(deliver, args, outbox, sessions)
        print(f"{args.sessions} sessions, {name}: {1e6 * seconds:.1f} µs a step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
