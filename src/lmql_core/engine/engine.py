"""The engine loop: runs the scheduler's batches through the backend on its own thread.

Its spine is a plain loop of schedule -> run -> postprocess (``launch.py`` runs a step,
``collect.py`` reads it back, ``endings.py`` ends sequences); the pipelined variant
(``pipeline.py``), chosen when the engine starts, only adds a step queued before the last one's
results are read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lmql_core.base.backend import Backend
from lmql_core.engine.collect import Collector
from lmql_core.engine.endings import Endings, Events, deliver_all
from lmql_core.engine.holds import Holds
from lmql_core.engine.launch import StepLauncher
from lmql_core.engine.mask_filler import MaskFiller
from lmql_core.engine.pipeline import Pipeline, chaining
from lmql_core.engine.scheduler import ScheduledChunk, Scheduler
from lmql_core.engine.sequence import Continuation, Sequence
from lmql_core.engine.steps import EngineStats, LaunchedStep

log = logging.getLogger(__name__)


# An idle engine woken by a request waits for its companions (clients send many at once, one
# frame each) so that they share one prefill step instead of trickling into several; unless the
# last request to wake it came alone (none followed it within ARRIVAL_WINDOW_S): a client that
# runs one program after another then never waits (1 ms of a 7 ms constrained program on the
# CPU), and a burst after it costs one step's delay to those of it that miss the first step.
ARRIVAL_QUIET_S = 1e-3  # until no request came for this long
ARRIVAL_WINDOW_S = 5e-3  # or this long after the first
DEFAULT_MAX_BATCH = 64


class Engine:
    # token_budget: prompt tokens a step feeds. 8192 rather than 2048: on one H100 a packed pass of
    # 2048 tokens is bound by the host's launches (gpt2-medium: 16 ms on the host, 4.5 on the GPU),
    # so fewer, larger steps cut the TTFT of a burst of long prompts (benchmarks/RESULTS.md, #19)
    def __init__(self, backend: Backend, *, max_batch: int | None = None, token_budget: int = 8192,
                 seed: int = 0, idle_work: bool = True) -> None:
        """``max_batch``: None takes the backend's (``Backend.max_batch``, which a backend may size
        from memory), or DEFAULT_MAX_BATCH where it sets none; a backend's limit is never exceeded.
        ``idle_work``: whether the backend's deferred work (``Backend.idle``) runs while no
        request is in flight (off for a model in the user's own process: see ``lmtp/local.py``)."""
        self.backend = backend
        wanted = max_batch or backend.max_batch or DEFAULT_MAX_BATCH
        limit = min(wanted, backend.max_batch or wanted)
        self.scheduler = Scheduler(max_batch=limit, token_budget=token_budget)
        self.stats = EngineStats()
        self._masks = MaskFiller(self.stats)  # grammars' masks, filled while the forward pass runs
        self._wake = threading.Condition()
        self._last_arrival = 0.0
        # client requests of the latest burst (those within ARRIVAL_WINDOW_S of the one that found
        # the engine without work) and of the one before it (0: none yet)
        self._burst_started = 0.0
        self._burst = self._last_burst = 0
        self._busy_since = 0.0
        self._stopping = False
        self._endings = Endings(backend, self.scheduler, self._wake, self.stats)
        self._launcher = StepLauncher(backend, self.stats, self._masks, self._endings, seed)
        chainer = chaining(backend)  # asked once: the pipeline's form is fixed from the start
        self._holds = Holds(self.scheduler, self._endings, self._wake, self.stats)
        self._collector = Collector(backend, self.stats, self._masks, self._endings, self._holds, chainer)
        pipeline = Pipeline(self._launcher, self._endings, self.scheduler, self._wake,
                            lambda: self._stopping, chainer)
        self._launch_next = pipeline.launch_next
        self.idle_work = idle_work
        self._idle_done = not idle_work or not hasattr(backend, "idle")  # Backend.idle has returned None
        self._thread = threading.Thread(target=self._serve, name="lmql-engine", daemon=True)
        self._thread.start()

    # --- called from any thread -------------------------------------------------------------

    def submit(self, seq: Sequence, from_client: bool = True) -> None:
        """Queue ``seq``, a request the session validated (token ids, context length).
        ``from_client`` False: a sequence the server made itself (a template's next hole), which
        no companions follow, so an idle engine does not wait for them (ARRIVAL_QUIET_S)."""
        seq.limit_to(self.backend.max_context)
        with self._wake:
            if from_client:
                self._count_arrival(time.perf_counter())
            self.scheduler.add(seq)
            self._wake.notify()

    def _count_arrival(self, now: float) -> None:
        """With the lock held: a client's request, counted into its burst."""
        if not self.scheduler.has_work():  # it starts a burst
            self._last_burst, self._burst, self._burst_started = self._burst, 1, now
        elif now - self._burst_started <= ARRIVAL_WINDOW_S:
            self._burst += 1
        self._last_arrival = now

    def cancel(self, seqs: list[Sequence]) -> None:
        """Stop ``seqs`` (those already ended are ignored): nothing more is sent for them."""
        with self._wake:
            cancelled = self.scheduler.cancel(seqs)
            self.stats.sequences_cancelled += len(cancelled)
            if cancelled:  # (its caches to free: the engine thread's work)
                self._wake.notify()

    def cancel_continued(self, stream: Continuation, current: Callable[[], Sequence | None]) -> None:
        """Stop a stream whose sequences follow one another (``Continuation``): none is started
        after this, and the one running now (``current()``, read with the lock held, so not one
        the engine thread is starting meanwhile) is cancelled."""
        with self._wake:
            stream.stopped = True
            seq = current()
        if seq is not None:
            self.cancel([seq])

    def active_sequences(self) -> int:
        with self._wake:
            return len(self.scheduler.running) + len(self.scheduler.waiting)

    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        self._masks.close()
        self._holds.close()

    # --- the engine thread ---------------------------------------------------------------

    def _serve(self) -> None:
        """The engine thread: a step that fails in an unforeseen way ends the streams in flight
        with the error, and the engine serves on (a dead thread would leave every later request
        waiting forever)."""
        while True:
            try:
                self._run()
                return
            except Exception as e:
                log.exception("the engine failed")
                with self._wake:
                    self._endings.fail_all(f"engine error: {e}")

    def _run(self) -> None:
        """The spine: step N is postprocessed (its results read, its events made), step N+1
        scheduled and run, and only then are step N's events handed to the clients, so that
        their threads do their share (encoding, sending) while this one waits for the device,
        instead of taking turns with it for the interpreter's lock while it launches the step.
        The pipelined variant queues step N+1 before step N's results are read (``pipeline.py``)."""
        step: LaunchedStep | None = None
        events: Events = {}
        self._busy_since = time.perf_counter()
        phases, clock = self.stats.phase_seconds, time.perf_counter
        while True:
            began = clock()
            following = self._launch_next(step) if step else None
            launched = clock()
            deliver_all(events)
            delivered = clock()
            events = self._collector.collect(step, following) if step else {}
            if following is not None and following.unsampled is not None:
                self._launcher.sample_chained(following)
            collected = clock()
            chunks = self._schedule(events, following)
            if chunks is None:
                return
            scheduled = clock()
            step = following or (self._launcher.launch(chunks) if chunks else None)
            phases["launch"] += launched - began + clock() - scheduled
            phases["deliver"] += delivered - launched
            phases["collect"] += collected - delivered

    def _schedule(self, events: Events, following: LaunchedStep | None) -> list[ScheduledChunk] | None:
        """With nothing to deliver nor to run, wait for work; then the next step's chunks (none
        where ``following`` runs next). None: the engine stops, every sequence ended and
        ``events`` delivered."""
        with self._wake:
            idle = not self.scheduler.running and not events and not following
            now = time.perf_counter()
            self.stats.busy_seconds += now - self._busy_since
            self._busy_since = now
            if not events and not following:
                self._wait_for_work()
            if idle and not self._stopping:
                self._gather_arrivals()
            if self._stopping:
                deliver_all(events)
                self._endings.fail_all("the server is shutting down")
                return None
            began = time.perf_counter()
            self._endings.release(self.scheduler.take_cancelled())
            self._holds.resume(events)
            chunks = [] if following else self._reschedule()
            self.stats.phase_seconds["schedule"] += time.perf_counter() - began
            return chunks

    def _wait_for_work(self) -> None:
        """With the lock held: wait until a request comes or the engine stops, the backend's
        idle work run meanwhile."""
        while not self._stopping and not self._has_work():
            pause = self._idle_work()
            if not self._stopping and not self._has_work():
                self._wake.wait(pause)
            self._busy_since = time.perf_counter()

    def _has_work(self) -> bool:
        return self.scheduler.has_work() or self._holds.any_ready()

    def _idle_work(self) -> float | None:
        """With the lock held: the backend's deferred work (``Backend.idle``), run with the lock
        released so that requests queue meanwhile; how long to wait before the next piece."""
        if self._idle_done:
            return None
        self._wake.release()
        try:
            pause = self.backend.idle()
        except Exception:
            log.exception("the backend's idle work failed; it is not called again")
            pause = None
        finally:
            self._wake.acquire()
        self._idle_done = pause is None
        return pause

    def _reschedule(self) -> list[ScheduledChunk]:
        """With the lock held: the next step's chunks, after preempting for fairness."""
        freed = self.scheduler.preempt()
        self._endings.release_ids(freed)
        self.stats.sequences_preempted += len(freed)
        return self.scheduler.schedule()

    def _gather_arrivals(self) -> None:
        """With the lock held: let a burst of requests finish arriving (see ARRIVAL_QUIET_S),
        unless the burst before it was a lone request."""
        started = time.perf_counter()
        if self._last_burst == 1 or started >= self._last_arrival + ARRIVAL_QUIET_S:
            return  # (a template's next hole, which the server submits, comes alone)
        deadline = started + ARRIVAL_WINDOW_S
        while not self._stopping:
            left = min(deadline, self._last_arrival + ARRIVAL_QUIET_S) - time.perf_counter()
            if left <= 0:
                break
            self._wake.wait(left)
        self.stats.arrival_waits += 1
        self.stats.arrival_wait_seconds += time.perf_counter() - started
