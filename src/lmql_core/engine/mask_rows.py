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

import contextlib
import os
import threading
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
    """What a step's rows took, summed over the threads filling them: their CPU time, their waits
    for a CPU (runnable, not running: Linux's schedstat), the rest of their time (blocked: waiting
    to take the interpreter's lock back); and the slowest row's call (no number of threads fills
    the step faster)."""

    cpu_seconds: float = 0.0
    cpu_wait_seconds: float = 0.0
    blocked_seconds: float = 0.0
    slowest_seconds: float = 0.0

    def add(self, other: RowCosts) -> None:
        self.blocked_seconds += other.blocked_seconds
        self.cpu_seconds += other.cpu_seconds
        self.cpu_wait_seconds += other.cpu_wait_seconds
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
        _check_rows(rows, bits)  # llguidance writes through the raw address: a wrong one corrupts memory
        row_bytes, base = bits.strides[0], bits.ctypes.data
        last = self._costs
        typical = sum(last.values()) / len(last) if last else 0.0
        costs = [last.get(id(matcher), typical) for matcher, _ in rows]
        pending = iter([rows[k] for k in sorted(range(len(rows)), key=costs.__getitem__, reverse=True)])
        took: dict[int, float] = {}
        shares: list[tuple[float, float, float]] = []  # each thread's wall, CPU and CPU-wait seconds

        def fill_share() -> None:
            clock = time.perf_counter
            share_started, (cpu_started, waited) = clock(), _thread_times()
            for matcher, j in pending:  # one shared iterator: each row goes to one thread
                started = clock()
                matcher.unsafe_compute_mask_ptr(base + j * row_bytes, row_bytes)
                took[id(matcher)] = clock() - started
            cpu_now, waited_now = _thread_times()
            shares.append((clock() - share_started, cpu_now - cpu_started, waited_now - waited))

        helpers = [self._pool().submit(fill_share) for _ in range(self._helpers_for(sum(costs), last))]
        try:
            fill_share()
        finally:
            _wait_all(helpers)
        self._costs = took
        wall, cpu, cpu_wait = (sum(column) for column in zip(*shares, strict=True))
        return RowCosts(cpu, cpu_wait, max(0.0, wall - cpu - cpu_wait), max(took.values(), default=0.0))

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


def _check_rows(rows: list[tuple[Any, int]], bits: np.ndarray) -> None:
    if bits.dtype != np.int32 or bits.ndim != 2 or not bits.flags.c_contiguous:
        raise ValueError("masks go into a C-ordered 2-d int32 array")
    if any(not 0 <= j < len(bits) for _, j in rows):
        raise ValueError(f"a row outside the {len(bits)} rows of the masks")


def _wait_all(futures: list[Future[None]]) -> None:
    """Wait for all of them; then raise the first one's error, if any."""
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


class _SchedStat:
    """A thread's /proc schedstat, kept open (a read takes ~1 µs), closed with the thread's
    ``_thread_files`` when the thread ends."""

    def __init__(self) -> None:
        try:
            self.fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = -1

    def waited(self) -> float:
        """Seconds this thread was runnable but not running (0 where Linux's schedstat is missing)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(os.pread(self.fd, 64, 0).split()[1]) * 1e-9
        return 0.0

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


_thread_files = threading.local()


def _thread_times() -> tuple[float, float]:
    """This thread's CPU seconds, and its seconds spent waiting for a CPU."""
    schedstat = getattr(_thread_files, "schedstat", None)
    if schedstat is None:
        schedstat = _thread_files.schedstat = _SchedStat()
    return time.thread_time(), schedstat.waited()
