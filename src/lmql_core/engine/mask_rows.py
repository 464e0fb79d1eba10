"""A step's llguidance masks spread over threads of our own, the costly rows first.

llguidance's executor (``LLExecutor.unsafe_compute_mask_ptr``) splits the rows into contiguous
runs on its rayon pool and cannot know which rows are slow; a row's cost changes slowly from
step to step (a string near its ``maxLength`` walks many tokens for several steps: 0.2-1.4 ms,
where most rows take 5-40 µs). Here each thread pulls the next row from one shared list ordered
by what each row cost last step, most first, and fills it with the matcher's own call, which
releases the interpreter's lock: the slow rows start at once, the quick ones fill the gaps, and
the step takes about max(slowest row, total / threads). As many threads as the last step's total
cost warrants (a thread per ``SHARE_SECONDS``), so a cheap step stays on one.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

# a helper thread is worth waking for about this much mask work (waking it and handing the rows
# back costs some tens of µs)
SHARE_SECONDS = 2e-4


@dataclass
class RowCosts:
    """What a step's rows took: each row's call (wall, the lock taken back included) summed, the
    threads' CPU time, and the slowest row (no number of threads fills the step faster)."""

    rows_seconds: float = 0.0
    cpu_seconds: float = 0.0
    slowest_seconds: float = 0.0

    def add(self, other: RowCosts) -> None:
        self.rows_seconds += other.rows_seconds
        self.cpu_seconds += other.cpu_seconds
        self.slowest_seconds += other.slowest_seconds


class RowThreads:
    """Fills llguidance matchers' masks into rows of a bitmask on up to ``threads`` threads (the
    caller's one of them)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._helpers: ThreadPoolExecutor | None = None
        self._costs: dict[int, float] = {}  # id(matcher) -> seconds its last mask took

    def fill(self, rows: list[tuple[Any, int]], bits: np.ndarray) -> RowCosts:
        """``rows``: (matcher, j) to fill ``bits[j]`` (int32 words, C order) with the matcher's
        mask. Returns once every row is filled (no matcher is in use then)."""
        row_bytes, base = bits.strides[0], bits.ctypes.data
        last = self._costs
        typical = sum(last.values()) / len(last) if last else 0.0
        costs = [last.get(id(matcher), typical) for matcher, _ in rows]
        pending = iter([rows[k] for k in sorted(range(len(rows)), key=costs.__getitem__, reverse=True)])
        took: dict[int, float] = {}
        cpu: list[float] = []

        def fill_share() -> None:
            clock, cpu_started = time.perf_counter, time.thread_time()
            for matcher, j in pending:  # one shared iterator: each row goes to one thread
                started = clock()
                matcher.unsafe_compute_mask_ptr(base + j * row_bytes, row_bytes)
                took[id(matcher)] = clock() - started
            cpu.append(time.thread_time() - cpu_started)

        helpers = [self._pool().submit(fill_share) for _ in range(self._helpers_for(sum(costs), last))]
        try:
            fill_share()
        finally:
            _wait_all(helpers)
        self._costs = took
        return RowCosts(sum(took.values()), sum(cpu), max(took.values(), default=0.0))

    def _helpers_for(self, expected_seconds: float, last: dict[int, float]) -> int:
        most = self.threads - 1
        if not last or expected_seconds >= most * SHARE_SECONDS:  # (nothing known yet: every thread)
            return most
        return int(expected_seconds / SHARE_SECONDS)

    def _pool(self) -> ThreadPoolExecutor:
        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(max_workers=self.threads - 1,
                                               thread_name_prefix="lmql-mask-rows")
        return self._helpers

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=False)


def _wait_all(futures: list[Future[None]]) -> None:
    """Wait for all of them; then raise the first one's error, if any."""
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
