"""The engine loop: runs the scheduler's batches through the backend on its own thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from lmql_core.base.backend import Backend, ChainedSteps, ReleasesTogether, StepInput, StepOutput
from lmql_core.engine import scoring
from lmql_core.engine.constraints import BatchMask, MaskFiller, PendingMasks, grammar_events, nothing_allowed
from lmql_core.engine.sampling import (
    PendingSamples,
    PendingScores,
    Samples,
    SamplingPlan,
    collect_sampling,
    collect_scoring,
    launch_sampling,
    launch_scoring,
    stream_seed,
)
from lmql_core.engine.scheduler import ScheduledChunk, Scheduler
from lmql_core.engine.sequence import Finish, Kind, Sequence, Sink, Status, TokenEvent
from lmql_core.engine.steps import EngineStats, LaunchedStep

log = logging.getLogger(__name__)


# An idle engine woken by a request waits for its companions (clients send many at once, one
# frame each) so that they share one prefill step instead of trickling into several.
ARRIVAL_QUIET_S = 1e-3  # until no request came for this long
ARRIVAL_WINDOW_S = 5e-3  # or this long after the first
NO_CHANCE = float("-inf")
DEFAULT_MAX_BATCH = 64
NOTHING_TO_CHOOSE = ("no token can be chosen: every token has probability 0 "
                     "(does logit_bias ban them all?)")


class Engine:
    # token_budget: prompt tokens a step feeds. 8192 rather than 2048: on one H100 a packed pass of
    # 2048 tokens is bound by the host's launches (gpt2-medium: 16 ms on the host, 4.5 on the GPU),
    # so fewer, larger steps cut the TTFT of a burst of long prompts (benchmarks/RESULTS.md, #19)
    def __init__(self, backend: Backend, *, max_batch: int | None = None, token_budget: int = 8192,
                 seed: int = 0) -> None:
        """``max_batch``: None takes the backend's (``Backend.max_batch``, which a backend may size
        from memory), or DEFAULT_MAX_BATCH where it sets none; a backend's limit is never exceeded."""
        self.backend = backend
        # asked once: isinstance against a runtime-checkable protocol takes 10-20 µs, and every step asks
        self._chaining_backend = backend if isinstance(backend, ChainedSteps) else None
        self._releases_together = isinstance(backend, ReleasesTogether)
        wanted = max_batch or backend.max_batch or DEFAULT_MAX_BATCH
        limit = min(wanted, backend.max_batch or wanted)
        self.scheduler = Scheduler(max_batch=limit, token_budget=token_budget)
        self.stats = EngineStats()
        self.seed = seed
        self._last_plan: SamplingPlan | None = None  # the engine thread's only
        self._masks = MaskFiller(self.stats)  # grammars' masks, filled while the forward pass runs
        self._wake = threading.Condition()
        self._last_arrival = 0.0
        self._stopping = False
        self._idle_done = not hasattr(backend, "idle")  # Backend.idle has returned None
        self._thread = threading.Thread(target=self._serve, name="lmql-engine", daemon=True)
        self._thread.start()

    # --- called from any thread -------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        """Queue ``seq``, a request the session validated (token ids, context length)."""
        seq.max_generated = seq.params.max_tokens
        if self.backend.max_context is not None:
            room = self.backend.max_context - seq.length
            assert room > 0, f"a request of {seq.length} tokens passed the session's context check"
            seq.max_generated = min(seq.max_generated, room)
        with self._wake:
            self.scheduler.add(seq)
            self._last_arrival = time.perf_counter()
            self._wake.notify()

    def cancel(self, seqs: list[Sequence]) -> None:
        """Stop ``seqs`` (those already ended are ignored): nothing more is sent for them."""
        with self._wake:
            self.stats.sequences_cancelled += len(self.scheduler.cancel(seqs))
            self._wake.notify()

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

    # --- the engine thread ---------------------------------------------------------------
    #
    # Steps are pipelined: step N+1 is launched (forward pass and sampling queued on the
    # device) before step N's tokens are turned into events and handed to the clients, so on a
    # GPU that host work overlaps the next step's computation. In steady decoding, step N+1 may
    # even be a chained step (``_launch_chained``; ``backend.ChainedSteps``): fed with step N's
    # sampled tokens still on the device, it is queued before the host waits for step N at all,
    # and the GPU never idles. A step that samples nothing (SCORE requests, prompt chunks that
    # complete no prompt) is followed the same way by a step launched ahead (``_launch_ahead``).

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
                    self._fail_all(f"engine error: {e}")

    def _run(self) -> None:
        launched: LaunchedStep | None = None
        events: dict[Sink, list[TokenEvent]] = {}
        began = time.perf_counter()
        while True:
            chained = self._launch_chained(launched) if launched else None
            if chained is None and launched is not None and launched.sampling is None:
                chained = self._launch_ahead()
            # Handed over only now, with the next step queued: the clients' threads then do their
            # share (encoding, sending) while this one waits for the device, instead of taking
            # turns with it for the interpreter's lock while it launches the step.
            self._deliver_all(events)
            events = self._collect(launched, chained) if launched else {}
            with self._wake:
                idle = not self.scheduler.running and not events and not chained
                now = time.perf_counter()
                self.stats.busy_seconds += now - began
                began = now
                while not self._stopping and not self.scheduler.has_work() and not events and not chained:
                    pause = self._idle_work()
                    if not self._stopping and not self.scheduler.has_work():
                        self._wake.wait(pause)
                    began = time.perf_counter()
                if idle and not self._stopping:
                    self._gather_arrivals()
                if self._stopping:
                    self._deliver_all(events)
                    self._fail_all("the server is shutting down")
                    return
                self._release(self.scheduler.take_cancelled())
                chunks = [] if chained else self._reschedule()
            launched = chained or (self._launch(chunks) if chunks else None)

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
        self._release_ids(freed)
        self.stats.sequences_preempted += len(freed)
        return self.scheduler.schedule()

    def _gather_arrivals(self) -> None:
        """With the lock held: let a burst of requests finish arriving (see ARRIVAL_QUIET_S)."""
        deadline = time.perf_counter() + ARRIVAL_WINDOW_S
        while not self._stopping:
            until = min(deadline, self._last_arrival + ARRIVAL_QUIET_S)
            left = until - time.perf_counter()
            if left <= 0:
                return
            self._wake.wait(left)

    def _launch(self, chunks: list[ScheduledChunk]) -> LaunchedStep | None:
        started = time.perf_counter()
        inputs = [self._step_input(c) for c in chunks]
        masks: PendingMasks | None = None
        try:
            masks = self._masks.start([c.seq for c in chunks
                                       if c.completes_prefill and c.seq.kind is Kind.GENERATE])
            output = self.backend.forward(inputs)
            for c in chunks:
                if c.seq.in_prefill:
                    self.stats.tokens_prefilled += len(c.tokens)
                c.seq.num_fed += len(c.tokens)
            self._end_failed_rows([c.seq for c in chunks], output.errors)
            ready = [i for i, c in enumerate(chunks) if c.completes_prefill
                     and c.seq.kind is Kind.GENERATE and c.seq.status is Status.RUNNING]
            seqs = [chunks[i].seq for i in ready]
            plan = self._plan_for(seqs)
            batch_mask = self._masks.wait(masks, seqs) if masks else None
            sampling = (self._sample(seqs, self._rows(output.last_logits, ready), plan, batch_mask)
                        if ready else None)
            scores = [c.seq for c in chunks if c.seq.kind is Kind.SCORE]
            scored, scoring = self._launch_scoring(scores, output)
        except Exception as e:  # a failed batch ends its streams, never the server
            log.exception("forward pass failed")
            self._end_all([c.seq for c in chunks], f"model error: {e}")
            return None
        headroom = min((s.max_generated - len(s.generated) - 1 for s in seqs), default=0)
        return LaunchedStep(seqs, sampling, scored, scoring, started, headroom)

    def _plan_for(self, seqs: list[Sequence]) -> SamplingPlan:
        """The last step's plan when it sampled the same streams (steady decoding without chained
        steps, as on the CPU): its arrays (bias entries, temperatures) are then built only once."""
        last = self._last_plan
        if (last is None or len(last.params) != len(seqs)
                or any(p is not s.params for p, s in zip(last.params, seqs, strict=True))):
            last = self._last_plan = SamplingPlan([s.params for s in seqs])
        return last

    def _step_input(self, chunk: ScheduledChunk) -> StepInput:
        seq = chunk.seq
        if seq.kind is not Kind.SCORE:
            return StepInput(seq.seq_id, chunk.tokens)
        # a SCORE runs whole from its first token: only the logits from the prompt's last on are read
        return StepInput(seq.seq_id, chunk.tokens, all_logits=True, logits_from=max(0, len(seq.prompt) - 1))

    def _end_failed_rows(self, seqs: list[Sequence], errors: dict[int, str]) -> None:
        """End the sequences whose rows the backend reported failed (``StepOutput.errors``)."""
        for seq in seqs:
            if seq.seq_id in errors:
                self._end(seq, TokenEvent(seq.stream_id, error=f"model error: {errors[seq.seq_id]}"))

    def _launch_scoring(self, seqs: list[Sequence],
                        output: StepOutput) -> tuple[list[Sequence], PendingScores | None]:
        """The step's SCORE requests, scored together (``launch_scoring``): those it scores, and
        their log-probs on the way to the host."""
        scored = []
        for seq in seqs:
            if seq.status is not Status.RUNNING:
                continue
            if seq.seq_id not in output.all_logits:  # a backend that ignores StepInput.all_logits
                self._end(seq, TokenEvent(seq.stream_id, error=scoring.missing_logits(self.backend)))
                continue
            scored.append(seq)
        if not scored:
            return [], None
        rows = [scoring.scored_rows(seq, output.all_logits[seq.seq_id]) for seq in scored]
        return scored, launch_scoring(self.backend.ops, rows, [seq.scored for seq in scored])

    def _sample(self, seqs: list[Sequence], logits: Any, plan: SamplingPlan,
                masks: BatchMask | None = None) -> PendingSamples:
        self.seed += 1
        histories = [s.tokens for s in seqs] if plan.penalized else None
        # a row samples the token at position num_fed (every token before it has been fed)
        row_seeds = [stream_seed(seqs[i].params.seed, seqs[i].num_fed)  # type: ignore[arg-type]
                     for i in plan.seeded_rows] if plan.seeded_rows else None
        return launch_sampling(self.backend.ops, logits, plan, self.seed, histories, row_seeds, masks)

    def _launch_chained(self, step: LaunchedStep) -> LaunchedStep | None:
        """Queue a chained step: the next decode step of ``step``'s sequences, fed with the
        tokens it sampled while they are still on the device. Only in steady decoding: every
        running sequence sampled in ``step``, none ends by length there, nobody waits or was
        cancelled. A sequence that samples EOS in ``step`` costs one wasted row in the chained step."""
        sampling = step.sampling
        backend = self._chainer()
        # a grammar's next mask needs the sampled token on the host first
        if backend is None or sampling is None or sampling.plan.penalized or sampling.plan.constrained \
                or step.scored:
            return None
        if step.headroom < 1:
            return None
        seqs = step.sampled
        with self._wake:
            if not self.scheduler.is_steady(seqs):
                return None
        started = time.perf_counter()
        try:
            seq_ids = [s.seq_id for s in seqs]
            output = backend.forward_sampled(seq_ids, sampling.tokens)
            if output is None:
                return None
            for s in seqs:
                s.num_fed += 1
            self._end_failed_rows(seqs, output.errors)  # their sampled rows are skipped later
            self.stats.steps_chained += 1
            following = self._sample(seqs, output.last_logits, sampling.plan)
            return LaunchedStep(seqs, following, [], None, started, step.headroom - 1, seq_ids)
        except Exception as e:
            log.exception("forward pass failed")
            self._end_all(seqs, f"model error: {e}")
            return None

    def _launch_ahead(self) -> LaunchedStep | None:
        """Queue the next step while one that samples nothing runs: its chunks need none of that
        step's results (the scheduler skips the sequences still waiting for theirs), so its host
        work (admitting prompts, packing them) overlaps the device's. No preemption meanwhile."""
        with self._wake:
            if self._stopping:
                return None
            chunks = self.scheduler.schedule()
        step = self._launch(chunks) if chunks else None
        self.stats.steps_ahead += step is not None
        return step

    def _collect(self, step: LaunchedStep,
                 chained: LaunchedStep | None = None) -> dict[Sink, list[TokenEvent]]:
        """Wait for a launched step's results and turn them into events, grouped by client.
        ``chained``: the chained step already queued with these samples as its input. This runs
        once per row per step on the thread every step waits for: keep its loop lean."""
        try:
            self._wait_for(step)
            samples = collect_sampling(self.backend.ops, step.sampling) if step.sampling else None
            scores = collect_scoring(self.backend.ops, step.scoring) if step.scoring else []
        except Exception as e:
            log.exception("sampling failed")
            self._end_all(step.sampled + step.scored, f"model error: {e}")
            return {}
        events: dict[Sink, list[TokenEvent]] = {}
        if samples:
            if chained and chained.chained_ids:
                backend = self._chainer()
                assert backend is not None, "a chained step ran on a backend that does not chain"
                backend.confirm(chained.chained_ids, samples.tokens)
            self._emit_samples(step.sampled, samples, events)
        scoring.add_events(step.scored, scores, events)
        self._finish(step.scored)
        self.stats.steps += 1
        self.stats.last_step_seconds = time.perf_counter() - step.started
        return events

    def _emit_samples(self, seqs: list[Sequence], samples: Samples,
                      events: dict[Sink, list[TokenEvent]]) -> None:
        eos = self.backend.eos_token_id
        taken = self._masks.take_tokens(seqs, samples.tokens, samples.logprobs, eos)  # grammars take theirs
        sink, batch = None, []  # one client's rows usually come together: group them in runs
        produced, ended, running = 0, [], Status.RUNNING
        for seq, token, logprob, top in zip(seqs, samples.tokens, samples.logprobs, samples.top_logprobs,
                                            strict=True):
            if seq.status is not running:  # a row of a chained step, after its sequence ended
                continue
            if not logprob > NO_CHANCE:  # NaN or -inf: every token had probability 0
                error = NOTHING_TO_CHOOSE if seq.params.constraint is None else nothing_allowed(seq)
                events.setdefault(seq.sink, []).append(TokenEvent(seq.stream_id, error=error))
                ended.append(seq)
                continue
            seq.generated.append(token)
            produced += 1
            reason = (Finish.EOS if token == eos else Finish.LENGTH if len(seq.generated) >= seq.max_generated
                      else None)
            if seq.sink != sink:
                sink = seq.sink
                batch = events.setdefault(sink, [])
            if reason is None and seq.params.constraint is not None:
                following = time.perf_counter()
                followed, ends = grammar_events(seq, token, logprob, top, taken.get(id(seq), False))
                self.stats.grammar_seconds += time.perf_counter() - following
                batch.extend(followed)
                produced += len(followed) - 1
                if ends:
                    ended.append(seq)
                continue
            batch.append(TokenEvent(seq.stream_id, token, logprob, reason, top))
            if reason:
                ended.append(seq)
        self.stats.tokens_generated += produced
        self._finish(ended)

    def _wait_for(self, step: LaunchedStep) -> None:
        waiting = time.perf_counter()
        transfers = [step.scoring.host_copy] if step.scoring else []
        if step.sampling:
            transfers.append(step.sampling.host_copy)
        for pending in transfers:
            self.backend.ops.wait_host_copy(pending)
        self.stats.device_wait_seconds += time.perf_counter() - waiting

    def _deliver_all(self, events: dict[Sink, list[TokenEvent]]) -> None:
        for sink, batch in events.items():
            self._deliver(sink, batch)

    def _rows(self, logits: Any, rows: list[int]) -> Any:
        return logits if len(rows) == len(logits) else logits[rows]

    def _finish(self, seqs: list[Sequence]) -> list[Sequence]:
        """End those of ``seqs`` still running, their caches released together (sequences that
        end in the same step often end together: a batch of equal requests); returns them."""
        if not seqs:
            return []
        with self._wake:
            ended = self.scheduler.finish(seqs)
        self.stats.sequences_finished += len(ended)
        self._release(ended)
        return ended

    def _end(self, seq: Sequence, event: TokenEvent) -> None:
        """End ``seq`` with ``event`` (an error), unless it ended or was cancelled already."""
        if self._finish([seq]):
            self._deliver(seq.sink, [event])

    def _end_all(self, seqs: list[Sequence], error: str) -> None:
        for seq in seqs:
            self._end(seq, TokenEvent(seq.stream_id, error=error))

    def _chainer(self) -> ChainedSteps | None:
        """The backend as one that runs chained steps, or None where it cannot or does not want to now."""
        backend = self._chaining_backend
        return backend if backend is not None and backend.chains_steps else None

    def _release(self, seqs: list[Sequence]) -> None:
        self._release_ids([seq.seq_id for seq in seqs])

    def _release_ids(self, seq_ids: list[int]) -> None:
        if not seq_ids:
            return
        try:
            if self._releases_together:  # together where the backend can, else one release each
                self.backend.release_all(seq_ids)  # type: ignore[attr-defined]
            else:
                for seq_id in seq_ids:
                    self.backend.release(seq_id)
        except Exception:
            log.exception("releasing sequences %s failed", seq_ids)

    def _deliver(self, sink: Sink, events: list[TokenEvent]) -> None:
        try:
            sink(events)
        except Exception:  # a broken client must not stop the engine
            log.exception("delivering tokens failed")

    def _fail_all(self, message: str) -> None:
        """With the lock held: end every sequence with ``message`` (the engine stops)."""
        ended, holding = self.scheduler.finish_all()
        for seq in ended:
            self._deliver(seq.sink, [TokenEvent(seq.stream_id, error=message)])
        self._release(holding)
