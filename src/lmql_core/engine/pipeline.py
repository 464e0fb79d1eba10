"""The pipelined variant of the engine's step: the next step queued on the device before the
host reads the last one's results, so that the host's work overlaps the device's.

Two kinds, chosen once when the engine starts: in steady decoding, on a backend that chains
steps (``backend.ChainedSteps``, the HF backend with CUDA graphs), a chained step fed with the
last step's sampled tokens while they are still on the device, so that the GPU never idles (and
the tokens a constraint forced, from the host, one a row a step: ``_forced_feeds``); after a
step that samples nothing (SCORE requests, prompt chunks that complete no prompt), on any
backend, a step launched ahead, whose chunks need none of that step's results.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmql_core.base.backend import Backend, ChainedSteps
from lmql_core.engine.endings import Endings
from lmql_core.engine.launch import StepLauncher
from lmql_core.engine.sampling import PendingSamples
from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Sequence, Status
from lmql_core.engine.steps import EngineStats, LaunchedStep

log = logging.getLogger(__name__)


def chaining(backend: Backend) -> ChainedSteps | None:
    """The backend as one that runs chained steps, or None where it cannot or does not want to."""
    return backend if isinstance(backend, ChainedSteps) and backend.chains_steps else None


class Pipeline:
    """Launches a step ahead of the one in flight; ``lock`` guards the scheduler (the engine's)."""

    def __init__(self, launcher: StepLauncher, endings: Endings, scheduler: Scheduler,
                 lock: threading.Condition, stopping: Callable[[], bool],
                 chainer: ChainedSteps | None) -> None:
        self.launcher = launcher
        self.endings = endings
        self.scheduler = scheduler
        self.lock = lock
        self.stopping = stopping
        self.chainer = chainer
        self.stats: EngineStats = launcher.stats
        self.admit_every = admit_every()
        self._deferred = 0  # chained steps since generations began to wait for one to join
        self._taken_over = 0  # the scheduler's ``taken_over`` at the last chained step
        self._rows_order = getattr(chainer, "rows_order", None)

    def launch_next(self, step: LaunchedStep) -> LaunchedStep | None:
        """A step queued before ``step``'s results are read: chained, or else launched ahead
        where ``step`` samples nothing; None where neither can run."""
        following = self._launch_chained(step) if self.chainer else None
        if following is None and step.sampling is None:
            following = self._launch_ahead()
        return following

    def _launch_chained(self, step: LaunchedStep) -> LaunchedStep | None:
        """Queue a chained step: the next decode step of ``step``'s batch, fed with the tokens it
        sampled while they are still on the device, and rows that sampled nothing there (their
        constraints forced tokens after the token before) with their next forced token from the
        host (``_forced_feeds``); waiting sequences join it where they fit (``_admit_beside``). Only
        in steady decoding: nobody was cancelled, and no sequence ends by length in ``step``; rows
        of sequences that ended since (EOS, a grammar's end) are left out, their cache slots given
        back meanwhile. A sequence that samples EOS in ``step`` costs one wasted row in the
        chained step."""
        sampling = step.sampling
        rows = step.sampled if step.batch is None else step.batch
        reason, batch = self._unchained(step, rows)
        feeds: ForcedFeeds | None = None
        if reason is None:
            feeds = _forced_feeds(batch, step.sampled)
            reason = "forced" if feeds is None else None
        if reason is not None or sampling is None or feeds is None:
            self.stats.chain_breaks[reason or "other"] += 1
            return None
        started = time.perf_counter()
        try:
            following = self._run_chained(step, batch, sampling, feeds, started)
        except Exception as e:
            log.exception("forward pass failed")
            self.endings.end_all(batch, f"model error: {e}")
            return None
        if following is None:
            self.stats.chain_breaks["backend"] += 1
        return following

    def _unchained(self, step: LaunchedStep, rows: list[Sequence]) -> tuple[str | None, list[Sequence]]:
        """Why no chained step can follow ``step``, whose batch was ``rows`` (a reason of
        ``EngineStats.chain_breaks``; None if one can), and the batch it would run: those of
        ``rows`` still running, which must be every running sequence."""
        sampling = step.sampling
        if sampling is None:
            return "nothing sampled", rows  # (a step launched ahead follows)
        if sampling.plan.penalized or step.scored:
            return "other", rows
        if step.headroom < 1:
            return "length", rows
        with self.lock:
            if self.scheduler.waiting and not self.scheduler.fits_waiting():
                return "waiting", rows  # (an ordinary step admits them, preempting for fairness)
            running = Status.RUNNING
            taken_over = self.scheduler.taken_over != self._taken_over
            self._taken_over = self.scheduler.taken_over
            # (none joined: the scheduler did not run; but a template's next hole may have gone on
            # in its last one's place, which it takes in the batch)
            ended = taken_over or len(rows) != len(self.scheduler.running)
            batch = [s for s in rows if s.status is running] if ended else rows
            if taken_over:
                batch += _newcomers(batch, self.scheduler.running)
            if not batch or not self.scheduler.is_steady(batch):
                return "ended", rows  # (every sequence ended, or a cancelled one's cache is not freed yet)
        if ended or step.batch is None:  # a new batch, or the first chained step after an ordinary one
            batch = self._in_backend_order(batch)
        return None, batch

    def _in_backend_order(self, batch: list[Sequence]) -> list[Sequence]:
        """``batch`` in the order its backend runs rows fastest (``ChainedSteps``' optional
        ``rows_order``): once a batch, where the backend would otherwise reorder every step
        (the HF backend's slots, no longer in the batch's order once releases moved some)."""
        keys = self._rows_order([seq.seq_id for seq in batch]) if self._rows_order else None
        if keys is None or all(a <= b for a, b in zip(keys, keys[1:], strict=False)):
            return batch
        return [seq for _, seq in sorted(zip(keys, batch, strict=True), key=lambda pair: pair[0])]

    def _run_chained(self, step: LaunchedStep, batch: list[Sequence], sampling: PendingSamples,
                     feeds: ForcedFeeds, started: float) -> LaunchedStep | None:
        backend = self.chainer
        assert backend is not None
        tokens = sampling.tokens
        if feeds.rows or feeds.picked is not None:  # forced tokens from the host, or rows left out
            tokens = self.launcher.backend.ops.place(feeds.tokens, feeds.sampled_rows, tokens, feeds.picked)
        output = backend.forward_sampled([s.seq_id for s in batch], tokens)
        if output is None:
            return None
        for s in batch:
            s.num_fed += 1
        if feeds.rows:
            backend.confirm([batch[r].seq_id for r in feeds.rows], [feeds.tokens[r] for r in feeds.rows])
            self.stats.tokens_forced_chained += len(feeds.rows)
        self.endings.end_failed_rows(batch, output.errors)  # their sampled rows are skipped later
        self.stats.steps_chained += 1
        # fed the tokens of ``sampling``, whose values the host confirms once read (those of
        # sequences that ended meanwhile are ignored)
        sampled_ids = [s.seq_id for s in step.sampled]
        late = feeds.rows or (sampling.plan.constrained and _late_sampled(batch))
        decoded = len(batch)
        batch, logits = self._admit_beside(batch, output.last_logits)
        # a constrained row's next mask needs the sampled token on the host first, unless it lets
        # every token through whatever that token is (``len(TOKENS(X)) < n`` well before n); where
        # one does not, a row is fed a forced token or a constrained sequence joined (its first
        # mask is made as the step samples), the chained step is sampled once the last step's
        # results are read (``sample_chained``: its rows whose tokens are all fed then), its
        # forward pass run meanwhile
        if late or any(s.params.constraint is not None or s.num_fed < s.length for s in batch[decoded:]):
            return LaunchedStep(batch, None, [], None, started, step.headroom - 1, sampled_ids,
                                unsampled=logits, batch=batch)
        following = self.launcher.sample(batch, logits, self.launcher.plan_for(batch))
        headroom = min([step.headroom - 1] + [s.max_generated - 1 for s in batch[decoded:]])
        return LaunchedStep(batch, following, [], None, started, headroom, sampled_ids, batch=batch)

    def _admit_beside(self, batch: list[Sequence], logits: Any) -> tuple[list[Sequence], Any]:
        """Waiting generations admitted beside a chained step (``Scheduler.admit``: where they
        fit without preemption), their prompts fed in a forward pass after its own: ``batch``
        and ``logits`` with theirs appended. A template's next hole joins so without an ordinary
        step for the whole batch (at 64 templates, one joins nearly every step on a GPU)."""
        with self.lock:
            chunks = self.scheduler.admit() if self._admits_now(len(batch)) else []
        if not chunks:
            return batch, logits
        joined, ops = [c.seq for c in chunks], self.launcher.backend.ops
        # a copy first: the chained step's logits may be a CUDA graph's output, in a memory pool
        # that a graph the prompts' pass replays shares (its intermediates may overwrite them)
        decoded = ops.concat([logits])
        try:
            prompts = self.launcher.prefill(chunks)
        except Exception as e:  # theirs alone: the chained step goes on for the others
            log.exception("forward pass failed")
            self.endings.end_all(joined, f"model error: {e}")
            return batch, decoded
        self.stats.sequences_admitted_chained += len(joined)
        self.stats.prompt_passes_chained += 1
        return batch + joined, ops.concat([decoded, prompts])

    def _admits_now(self, rows: int) -> bool:
        """With the lock held: whether the waiting generations join beside this chained step of
        ``rows`` rows, or wait for a later one (``admit_every``), so that several share a pass."""
        if not self.scheduler.waiting:
            self._deferred = 0
            return False
        if self.admit_every > 1 and rows >= DEFER_FROM_ROWS and self._deferred + 1 < self.admit_every:
            self._deferred += 1
            self.stats.admissions_deferred += 1
            return False
        self._deferred = 0
        return True

    def _launch_ahead(self) -> LaunchedStep | None:
        """Queue the next step while one that samples nothing runs: its chunks need none of that
        step's results (the scheduler skips the sequences still waiting for theirs), so its host
        work (admitting prompts, packing them) overlaps the device's. No preemption meanwhile."""
        with self.lock:
            if self.stopping():
                return None
            chunks = self.scheduler.schedule()
        step = self.launcher.launch(chunks) if chunks else None
        self.stats.steps_ahead += step is not None
        return step


@dataclass
class ForcedFeeds:
    """A chained step's input, beside the last step's sampled tokens: ``tokens[r]`` for the
    batch's rows ``rows`` (each its next forced token); ``sampled_rows``: the others, fed the
    sampled tokens ``picked`` (indices into them; None: all of them, in order)."""

    tokens: list[int]
    rows: list[int]
    sampled_rows: list[int]
    picked: list[int] | None = None


NO_FEEDS = ForcedFeeds([], [], [])
# Generations that join a batch of at least DEFER_FROM_ROWS rows beside chained steps are let in
# every ADMIT_EVERY-th chained step (``LMQL_ADMIT_EVERY`` sets another, 1: every step). Each join
# is a prompt pass after the chained step, whose host work and weights' read cost the whole batch
# (on an H100, 64 rows: ~0.4 ms of a 1.6 ms step, a pass for nearly every step of 64 LMQL
# programs, #31); waiting a step or two lets several share one pass, at a step or two of each
# joiner's time: 64 programs in 22 passes instead of 59, 13% less of the engine thread's time a
# step (benchmarks/RESULTS.md). A batch below DEFER_FROM_ROWS admits at every step: its steps
# are short, and its joiners a large share of it.
ADMIT_EVERY = 3
ADMIT_EVERY_ENV = "LMQL_ADMIT_EVERY"
DEFER_FROM_ROWS = 32


def admit_every() -> int:
    asked = os.environ.get(ADMIT_EVERY_ENV, "").strip()
    if not asked:
        return ADMIT_EVERY
    if not asked.isdigit() or int(asked) < 1:
        log.warning("%s=%r is not a positive whole number: joins every %d chained steps",
                    ADMIT_EVERY_ENV, asked, ADMIT_EVERY)
        return ADMIT_EVERY
    return int(asked)


# Forced runs ride in chained steps, one token a row a step, while the rows they keep from sampling
# (each row's forced tokens but its last) are at most this share of the batch; beyond, they are fed
# whole in an ordinary step. Each row-step spent feeding one token costs that row a token of
# progress; an ordinary step costs the whole batch the overlap of host and device work for a step
# (chained steps exist because that overlap is most of a step on a GPU: 0.3x of free streams'
# tokens/s without it, #31), so at half a batch of idle rows either way costs about the same. A
# single forced token after a sampled one, the usual case (a literal's last characters, a choice's
# rest), always rides; a long literal in a small batch, or many rows forced at once, does not.
IDLE_ROWS_SHARE = 0.5


def _forced_feeds(batch: list[Sequence], sampled: list[Sequence]) -> ForcedFeeds | None:
    """What a chained step feeds ``batch`` after a step that sampled ``sampled`` (in the same
    order; some may have ended since and are not in ``batch``): the sampled token where a row
    sampled one, else its next forced token (``ForcedFeeds``). None where such a row has none or
    the forced runs are too long to ride (IDLE_ROWS_SHARE)."""
    if sampled is batch or (len(sampled) == len(batch) and sampled == batch):
        return NO_FEEDS
    index = {id(seq): i for i, seq in enumerate(sampled)}
    tokens, rows, sampled_rows, picked, idle = [0] * len(batch), [], [], [], 0
    for row, seq in enumerate(batch):
        at = index.get(id(seq))
        if at is not None:
            sampled_rows.append(row)
            picked.append(at)
            continue
        left, fed = seq.length - seq.num_fed, seq.num_fed - len(seq.prompt) - len(seq.scored)
        if left < 1:
            return None
        # (the prompt's rest of a sequence that went on in its stream's last one's cache)
        tokens[row] = seq.generated[fed] if fed >= 0 else seq.tokens[seq.num_fed]
        rows.append(row)
        idle += left - 1
    if idle > IDLE_ROWS_SHARE * len(batch):
        return None
    return ForcedFeeds(tokens, rows, sampled_rows, None if picked == list(range(len(sampled))) else picked)


def _newcomers(batch: list[Sequence], running: list[Sequence]) -> list[Sequence]:
    """The running sequences not in ``batch`` (those that went on in another's place)."""
    inside = {id(seq) for seq in batch}
    return [seq for seq in running if id(seq) not in inside]


def _late_sampled(seqs: list[Sequence]) -> bool:
    """Whether a chained step after the one in flight (its tokens not on the host yet) is
    sampled late, under masks made once those tokens are read: where a constrained sequence of
    ``seqs`` may not let every token through next (an llguidance grammar's state or an LMQL
    kind's row needs the token in flight)."""
    return any(seq.params.constraint is not None
               and not seq.params.constraint.allows_all_after(len(seq.generated) + 1) for seq in seqs)
