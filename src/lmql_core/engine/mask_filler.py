"""A step's constraint masks, filled beside the engine thread, and the grammars' sampled tokens.

``MaskFiller`` fills the masks of a step's constrained rows on its own thread (llguidance's rows
in one batch call over its executor's threads, without the interpreter's lock, a thread's run of
rows one lexer's: ``constraints.GrammarCompiler``; LMQL's kinds,
``mask_constraint.MaskConstraint``, fill theirs there in Python). Where the last step's fill was
not quick, the next step's llguidance masks are started as soon as the grammars took this step's
tokens (``prefetch``, from ``collect.py``), so that they are filled while the engine thread hands
out events, schedules and launches the forward pass, not only while the device runs it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmql_core.engine.sequence import Sequence, Status

if TYPE_CHECKING:
    from lmql_core.engine.constraints import Followed

# masks that took less than this last step are filled on the engine thread once the forward pass is
# launched (on a GPU, still while it runs): handing them to the mask thread and back costs more
INLINE_FILL_SECONDS = 2e-4
# threads for llguidance's masks: at most this many (64 rows of 5-1400 µs each need no more), and
# two CPUs left to the engine thread and the event loop
MAX_MASK_THREADS = 8
MASK_THREADS_ENV = "LMQL_MASK_THREADS"

Filled = tuple[np.ndarray, float]  # a step's masks, and the seconds filling them took


def mask_threads() -> int:
    """Threads for llguidance's masks: ``LMQL_MASK_THREADS``, else the CPUs this process may run
    on (its affinity and a cgroup's quota) less two, between 1 and MAX_MASK_THREADS. (llguidance's
    own default, 80% of the machine's CPUs up to 32, can exceed a container's share.)"""
    asked = os.environ.get(MASK_THREADS_ENV)
    if asked:
        return max(1, int(asked))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_MASK_THREADS, min(cpus, _cgroup_cpus() or cpus) - 2))


def _cgroup_cpus() -> int | None:
    """The CPUs a cgroup (v2) quota allows this process, None without one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, int(quota) // int(period))


@dataclass
class BatchMask:
    """One step's masks: ``bits[j]`` (llguidance's bitmask, 32 tokens an int32) is row ``rows[j]``'s."""

    rows: list[int]
    bits: np.ndarray


class PendingMasks:
    """Masks being filled for ``constrained`` (in this order) while the forward pass runs."""

    def __init__(self, filled: Callable[[], Filled], constrained: list[Any]) -> None:
        self._filled = filled  # waits for the mask thread, or fills them here (``MaskFiller.start``)
        self._position = {id(seq): j for j, seq in enumerate(constrained)}
        self.fill_seconds = 0.0  # how long filling them took (known once ``for_rows`` returned)

    def covers(self, seqs: list[Any]) -> bool:
        return all(id(seq) in self._position for seq in seqs)

    def for_rows(self, sampled: list[Any]) -> BatchMask | None:
        """The masks of the constrained ones among ``sampled`` (a step's rows, in order); waits
        until they are filled, so no matcher is in use once this returns."""
        bits, self.fill_seconds = self._filled()
        rows = [r for r, seq in enumerate(sampled) if id(seq) in self._position]
        if not rows:
            return None
        positions = [self._position[id(sampled[r])] for r in rows]
        if positions == list(range(len(bits))):  # every filled row, in order (steady decoding)
            return BatchMask(rows, bits)
        return BatchMask(rows, bits[positions])


class MaskFiller:
    """Fills a step's masks on another thread (the engine thread goes on to the forward pass),
    llguidance's rows on its executor's threads."""

    def __init__(self, stats: Any) -> None:
        """``stats``: the engine's ``EngineStats``, where the time spent on masks is counted."""
        self.stats = stats
        self._last_fill = 0.0  # seconds the last step's masks took
        self._thread: ThreadPoolExecutor | None = None
        self._executor: Any = None
        self._threads = 0  # the executor's
        self._ahead: PendingMasks | None = None  # the next step's llguidance masks, started early

    def prefetch(self, seqs: list[Sequence]) -> None:
        """Start filling the next step's masks of ``seqs`` (running sequences whose grammars just
        took this step's tokens), when they are all llguidance's and filling is not quick: on
        llguidance's threads while the engine thread makes the step's events (and, where the next
        step is not sampled at once, launches it)."""
        self._settle()
        if self._last_fill < INLINE_FILL_SECONDS or not seqs or not all(_follows_tokens(s) for s in seqs):
            return
        rows: list[tuple[Any, list[int]]] = [(seq.params.constraint, []) for seq in seqs]
        self._ahead = PendingMasks(self._mask_thread().submit(self._fill, rows).result, seqs)

    def start(self, seqs: list[Sequence], overlapped: bool = True) -> PendingMasks | None:
        """``seqs``: the step's sequences that sample; None when none of them needs a mask (a
        constraint that lets every token and the end through now, ``len(TOKENS(X)) < n`` well
        before n or ``len(X) < n`` while every token fits, needs none: its row would ban
        nothing). ``overlapped``: whether the engine thread has other work (the forward pass)
        before it waits for them; without, they are filled on this thread (waking the mask
        thread and waiting for it would cost more)."""
        constrained = [seq for seq in seqs if _needs_mask(seq)]
        ahead = self._ahead
        if ahead is not None and constrained and ahead.covers(constrained):
            self._ahead = None
            return ahead
        self._settle()  # a stream joined (or none samples): fill again once no matcher is in use
        if not constrained:
            return None
        rows = [(seq.params.constraint, [] if _follows_tokens(seq) else list(seq.generated))
                for seq in constrained]
        if not overlapped or self._last_fill < INLINE_FILL_SECONDS:  # filled in ``wait``
            return PendingMasks(lambda: self._fill(rows), constrained)
        return PendingMasks(self._mask_thread().submit(self._fill, rows).result, constrained)

    def wait(self, masks: PendingMasks, sampled: list[Sequence]) -> BatchMask | None:
        """``masks.for_rows(sampled)``, with the time waited and the time filling took counted."""
        waiting = time.perf_counter()
        batch_mask = masks.for_rows(sampled)
        self.stats.mask_wait_seconds += time.perf_counter() - waiting
        self.stats.mask_fill_seconds += masks.fill_seconds
        self._last_fill = masks.fill_seconds
        return batch_mask

    def _fill(self, rows: list[tuple[Any, list[int]]]) -> Filled:
        """``rows``: each constrained sequence's constraint and (LMQL's kinds) tokens so far."""
        started = time.perf_counter()
        words = max(c.mask_words for c, _ in rows)  # the same for all: an engine serves one model
        bits = np.zeros((len(rows), words), dtype=np.int32)
        grammars = [(c, j) for j, (c, _) in enumerate(rows) if c.follows_tokens]
        # by lexer: llguidance's threads take the list in runs, a run then a lexer (see GrammarCompiler)
        matchers = [(c.matcher, j) for c, j in sorted(grammars, key=lambda grammar: grammar[0].lexer)]
        if matchers:
            self._llguidance().unsafe_compute_mask_ptr(matchers, bits.ctypes.data, bits.strides[0], len(bits))
        if len(matchers) < len(rows):
            for j, (constraint, generated) in enumerate(rows):
                if not constraint.follows_tokens:
                    constraint.fill(generated, bits[j, :constraint.mask_words])
        return bits, time.perf_counter() - started

    def _settle(self) -> None:
        """Wait for masks started ahead that no step took (no matcher may be in use meanwhile);
        they are dropped, and so is an error filling them (a step that fills them again meets it)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                ahead.for_rows([])

    def _mask_thread(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmql-masks")
        return self._thread

    def _llguidance(self) -> Any:
        if self._executor is None:
            import llguidance

            self._threads = mask_threads()
            self._executor = llguidance.LLExecutor(self._threads)
        return self._executor

    def take_tokens(self, seqs: list[Sequence], tokens: list[int], logprobs: list[float],
                    eos: int | None) -> dict[int, Followed]:
        """The grammars of a step's running constrained sequences take their sampled tokens (EOS
        and rows where nothing could be chosen aside), all at once on llguidance's threads
        without the interpreter's lock (one by one costs ~2.5x as much on several threads; with
        one, handing the rows over costs more than it saves), then the tokens each forces: by
        ``id(seq)``, what each grammar did (``Followed``). Then the next step's masks of the
        batch's running constrained sequences are started (``prefetch``), the rows that end or
        feed forced tokens next left out: no matcher of theirs is called until the step's masks
        are taken (``start``), while ``Followed`` tells the events."""
        self._settle()
        running, no_chance = Status.RUNNING, float("-inf")
        rows = [(seq, token) for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True)
                if token != eos and logprob > no_chance and _follows_tokens(seq) and seq.status is running]
        rows.sort(key=lambda row: row[0].params.constraint.lexer)  # a thread's run, a lexer (as in _fill)
        if not rows:
            return {}
        started = time.perf_counter()
        matchers = [(seq.params.constraint.matcher, token) for seq, token in rows]
        executor = self._llguidance()
        taken = (executor.consume_token_par(matchers) if self._threads > 1
                 else [matcher.consume_token(token) for matcher, token in matchers])
        followed = {id(seq): seq.params.constraint.follow(ok)
                    for (seq, _), ok in zip(rows, taken, strict=True)}
        self.stats.grammar_seconds += time.perf_counter() - started
        self.prefetch([seq for seq in seqs if seq.status is running and seq.params.constraint is not None
                       and (not _follows_tokens(seq) or _goes_on(followed.get(id(seq))))])
        return followed

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False)


def _needs_mask(seq: Sequence) -> bool:
    constraint = seq.params.constraint
    return constraint is not None and constraint.needs_mask(seq.generated)


def _goes_on(followed: Followed | None) -> bool:
    return followed is not None and followed.goes_on


def _follows_tokens(seq: Sequence) -> bool:
    return seq.params.constraint is not None and seq.params.constraint.follows_tokens

