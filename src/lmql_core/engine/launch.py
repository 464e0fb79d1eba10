"""Running a step: the scheduler's chunks through the backend's forward pass, and their sampling
and scoring queued on the device (read back by ``collect.py``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from lmql_core.base.backend import Backend, StepInput, StepOutput
from lmql_core.engine import scoring
from lmql_core.engine.endings import Endings
from lmql_core.engine.mask_filler import BatchMask, MaskFiller, PendingMasks
from lmql_core.engine.sampling import (
    PendingSamples,
    PendingScores,
    SamplingPlan,
    launch_sampling,
    launch_scoring,
    stream_seed,
)
from lmql_core.engine.scheduler import ScheduledChunk
from lmql_core.engine.sequence import Kind, Sequence, Status, TokenEvent
from lmql_core.engine.steps import EngineStats, LaunchedStep

log = logging.getLogger(__name__)


class StepLauncher:
    """Launches the engine's steps; ``seed`` advances once a sampling."""

    def __init__(self, backend: Backend, stats: EngineStats, masks: MaskFiller, endings: Endings,
                 seed: int) -> None:
        self.backend = backend
        self.stats = stats
        self.masks = masks
        self.endings = endings
        self.seed = seed
        self._last_plan: SamplingPlan | None = None

    def launch(self, chunks: list[ScheduledChunk]) -> LaunchedStep | None:
        """Run ``chunks``; None where the step failed (its sequences then ended with the error)."""
        started = time.perf_counter()
        inputs, sampling_rows, scores, prefilled = self._read_chunks(chunks)
        masks: PendingMasks | None = None
        try:
            masks = self.masks.start([chunks[i].seq for i in sampling_rows])
            output = self.backend.forward(inputs)
            for c in chunks:
                c.seq.num_fed += len(c.tokens)
            self.stats.tokens_prefilled += prefilled
            self.endings.end_failed_rows([c.seq for c in chunks], output.errors)
            running = Status.RUNNING  # (a sequence cancelled meanwhile samples nothing)
            ready = [i for i in sampling_rows if chunks[i].seq.status is running]
            seqs = [chunks[i].seq for i in ready]
            plan = self.plan_for(seqs)
            batch_mask = self.masks.wait(masks, seqs) if masks else None
            sampling = (self.sample(seqs, self._rows(output.last_logits, ready), plan, batch_mask)
                        if ready else None)
            scored, scoring = self._launch_scoring(scores, output)
        except Exception as e:  # a failed batch ends its streams, never the server
            log.exception("forward pass failed")
            self.endings.end_all([c.seq for c in chunks], f"model error: {e}")
            return None
        headroom = min((s.max_generated - len(s.generated) - 1 for s in seqs), default=0)
        return LaunchedStep(seqs, sampling, scored, scoring, started, headroom)

    def prefill(self, chunks: list[ScheduledChunk]) -> Any:
        """Feed the prompt chunks of generations admitted beside a chained step (``Scheduler.admit``),
        in a forward pass of their own: their last logits, a row a chunk."""
        inputs, _, _, prefilled = self._read_chunks(chunks)
        output = self.backend.forward(inputs)
        for c in chunks:
            c.seq.num_fed += len(c.tokens)
        self.stats.tokens_prefilled += prefilled
        self.endings.end_failed_rows([c.seq for c in chunks], output.errors)
        return output.last_logits

    @staticmethod
    def _read_chunks(chunks: list[ScheduledChunk]) -> tuple[list[StepInput], list[int], list[Sequence], int]:
        """One pass over a step's chunks (up to ``max_batch`` of them, every step): the backend's
        inputs, the rows that sample once fed (generations whose prompt they complete or that
        decode), the SCORE requests, and the prompt tokens they feed."""
        inputs, sampling_rows, scores, prefilled = [], [], [], 0
        for row, chunk in enumerate(chunks):
            seq = chunk.seq
            if seq.num_fed < len(seq.prompt) + len(seq.scored):
                prefilled += len(chunk.tokens)
            if seq.kind is Kind.SCORE:
                # it runs whole from its first token: only the logits from the prompt's last on are read
                inputs.append(StepInput(seq.seq_id, chunk.tokens, all_logits=True,
                                        logits_from=max(0, len(seq.prompt) - 1)))
                scores.append(seq)
                continue
            inputs.append(StepInput(seq.seq_id, chunk.tokens))
            if chunk.completes_prefill:
                sampling_rows.append(row)
        return inputs, sampling_rows, scores, prefilled

    def sample_chained(self, step: LaunchedStep) -> None:
        """Sample a chained step of constrained sequences (``LaunchedStep.unsampled``) now that the
        last step's results are read: the rows whose tokens are all fed, of sequences still
        running, under masks. A row samples nothing here where its constraint forced tokens after
        the one it was fed, or it was fed a forced token that is not its run's last: the next
        chained steps feed them (``pipeline._forced_feeds``), and it stays in their batch."""
        logits, step.unsampled = step.unsampled, None
        running = Status.RUNNING
        ready = [i for i, s in enumerate(step.sampled) if s.status is running and s.num_fed == s.length]
        seqs = [step.sampled[i] for i in ready]
        step.sampled = seqs
        if not seqs:
            return
        try:
            masks = self.masks.start(seqs, overlapped=False)  # (its forward pass is queued already)
            batch_mask = self.masks.wait(masks, seqs) if masks else None
            step.sampling = self.sample(seqs, self._rows(logits, ready), self.plan_for(seqs), batch_mask)
        except Exception as e:  # as in ``launch``: the streams end, the server lives on
            log.exception("sampling failed")
            self.endings.end_all(seqs, f"model error: {e}")
            step.sampled = []
            return
        step.headroom = min(s.max_generated - len(s.generated) - 1 for s in seqs)

    def sample(self, seqs: list[Sequence], logits: Any, plan: SamplingPlan,
               masks: BatchMask | None = None) -> PendingSamples:
        self.seed += 1
        histories = [s.tokens for s in seqs] if plan.penalized else None
        # a row samples the token at position num_fed (every token before it has been fed)
        row_seeds = [stream_seed(seqs[i].params.seed, seqs[i].num_fed)  # type: ignore[arg-type]
                     for i in plan.seeded_rows] if plan.seeded_rows else None
        return launch_sampling(self.backend.ops, logits, plan, self.seed, histories, row_seeds, masks)

    def _rows(self, logits: Any, rows: list[int]) -> Any:
        return logits if len(rows) == len(logits) else self.backend.ops.pick_rows(logits, rows)

    def plan_for(self, seqs: list[Sequence]) -> SamplingPlan:
        """The last step's plan when it sampled the same streams (steady decoding): its arrays
        (bias entries, temperatures) are then built only once."""
        last = self._last_plan
        if (last is None or len(last.params) != len(seqs)
                or any(p is not s.params for p, s in zip(last.params, seqs, strict=True))):
            last = self._last_plan = SamplingPlan([s.params for s in seqs])
        return last

    def _launch_scoring(self, seqs: list[Sequence],
                        output: StepOutput) -> tuple[list[Sequence], PendingScores | None]:
        """The step's SCORE requests, scored together (``launch_scoring``): those it scores, and
        their log-probs on the way to the host."""
        scored = []
        for seq in seqs:
            if seq.status is not Status.RUNNING:
                continue
            if seq.seq_id not in output.all_logits:  # a backend that ignores StepInput.all_logits
                self.endings.end(seq, TokenEvent(seq.stream_id, error=scoring.missing_logits(self.backend)))
                continue
            scored.append(seq)
        if not scored:
            return [], None
        rows = [scoring.scored_rows(seq, output.all_logits[seq.seq_id]) for seq in scored]
        return scored, launch_scoring(self.backend.ops, rows, [seq.scored for seq in scored])

