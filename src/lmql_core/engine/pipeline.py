"""The pipelined variant of the engine's step: the next step queued on the device before the
host reads the last one's results, so that the host's work overlaps the device's.

Two kinds, chosen once when the engine starts: in steady decoding, on a backend that chains
steps (``backend.ChainedSteps``, the HF backend with CUDA graphs), a chained step fed with the
last step's sampled tokens while they are still on the device, so that the GPU never idles;
after a step that samples nothing (SCORE requests, prompt chunks that complete no prompt), on
any backend, a step launched ahead, whose chunks need none of that step's results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lmql_core.base.backend import Backend, ChainedSteps
from lmql_core.engine.endings import Endings
from lmql_core.engine.launch import StepLauncher
from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Sequence
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

    def launch_next(self, step: LaunchedStep) -> LaunchedStep | None:
        """A step queued before ``step``'s results are read: chained, or else launched ahead
        where ``step`` samples nothing; None where neither can run."""
        following = self._launch_chained(step) if self.chainer else None
        if following is None and step.sampling is None:
            following = self._launch_ahead()
        return following

    def _launch_chained(self, step: LaunchedStep) -> LaunchedStep | None:
        """Queue a chained step: the next decode step of ``step``'s sequences, fed with the
        tokens it sampled while they are still on the device. Only in steady decoding: every
        running sequence sampled in ``step``, none ends by length there, nobody waits or was
        cancelled. A sequence that samples EOS in ``step`` costs one wasted row in the chained step."""
        sampling, backend = step.sampling, self.chainer
        if backend is None or sampling is None or sampling.plan.penalized or step.scored:
            return None
        # a constrained row's next mask needs the sampled token on the host first, unless it lets
        # every token through whatever that token is (``len(TOKENS(X)) < n`` well before n); where
        # one does not, the chained step is sampled once the last step's results are read
        # (``sample_chained``), its forward pass run meanwhile
        late = sampling.plan.constrained and _late_sampled(step.sampled)
        if step.headroom < 1:
            return None
        seqs = step.sampled
        with self.lock:
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
            self.endings.end_failed_rows(seqs, output.errors)  # their sampled rows are skipped later
            self.stats.steps_chained += 1
            if late:
                return LaunchedStep(seqs, None, [], None, started, step.headroom - 1, seq_ids,
                                    unsampled=output.last_logits)
            following = self.launcher.sample(seqs, output.last_logits, sampling.plan)
            return LaunchedStep(seqs, following, [], None, started, step.headroom - 1, seq_ids)
        except Exception as e:
            log.exception("forward pass failed")
            self.endings.end_all(seqs, f"model error: {e}")
            return None

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


def _late_sampled(seqs: list[Sequence]) -> bool:
    """Whether a chained step after the one in flight (its tokens not on the host yet) is
    sampled late, under masks made once those tokens are read: where a constrained sequence of
    ``seqs`` may not let every token through next (an llguidance grammar's state or an LMQL
    kind's row needs the token in flight)."""
    return any(seq.params.constraint is not None
               and not seq.params.constraint.allows_all_after(len(seq.generated) + 1) for seq in seqs)
