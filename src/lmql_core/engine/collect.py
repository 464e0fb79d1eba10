"""Postprocessing a step: wait for its results on the host and turn them into events."""

from __future__ import annotations

import logging
import time

from lmql_core.base.backend import Backend, ChainedSteps
from lmql_core.constraints.vocabulary import slow_masks_deferred
from lmql_core.engine import scoring
from lmql_core.engine.endings import Endings, Events
from lmql_core.engine.holds import Holds
from lmql_core.engine.mask_constraint import FollowPending
from lmql_core.engine.mask_filler import MaskFiller
from lmql_core.engine.sampling import Samples, collect_sampling, collect_scoring
from lmql_core.engine.sequence import Finish, Sequence, Status, TokenEvent
from lmql_core.engine.steps import EngineStats, LaunchedStep

log = logging.getLogger(__name__)

NO_CHANCE = float("-inf")
NOTHING_TO_CHOOSE = ("no token can be chosen: every token has probability 0 "
                     "(does logit_bias ban them all?)")


class Collector:
    """Reads the engine's launched steps back. ``chainer``: the backend where it runs chained
    steps (told the values of the tokens they were fed), else None."""

    def __init__(self, backend: Backend, stats: EngineStats, masks: MaskFiller, endings: Endings,
                 holds: Holds, chainer: ChainedSteps | None) -> None:
        self.backend = backend
        self.stats = stats
        self.masks = masks
        self.endings = endings
        self.holds = holds
        self.chainer = chainer

    def collect(self, step: LaunchedStep, chained: LaunchedStep | None = None) -> Events:
        """Wait for a launched step's results and turn them into events, grouped by client.
        ``chained``: the chained step already queued with these samples as its input. This runs
        once per row per step on the thread every step waits for: keep its loop lean."""
        try:
            self._wait_for(step)
            samples = collect_sampling(self.backend.ops, step.sampling) if step.sampling else None
            scores = collect_scoring(self.backend.ops, step.scoring) if step.scoring else []
        except Exception as e:
            log.exception("sampling failed")
            self.endings.end_all(step.sampled + step.scored, f"model error: {e}")
            return {}
        events: Events = {}
        if samples:
            if chained and chained.chained_ids:
                assert self.chainer is not None, "a chained step ran on a backend that does not chain"
                self.chainer.confirm(chained.chained_ids, samples.tokens)
            self._emit_samples(step.sampled, samples, events)
        scoring.add_events(step.scored, scores, events)
        self.endings.finish(step.scored)
        self.stats.steps += 1
        self.stats.last_step_seconds = time.perf_counter() - step.started
        return events

    def _emit_samples(self, seqs: list[Sequence], samples: Samples, events: Events) -> None:
        eos = self.backend.eos_token_id
        # the grammars take theirs, and their next masks start filling beside this loop
        followed = self.masks.take_tokens(seqs, samples.tokens, samples.logprobs, eos)
        sink, batch = None, []  # one client's rows usually come together: group them in runs
        produced, ended, failed, running = 0, [], [], Status.RUNNING
        for seq, token, logprob, top in zip(seqs, samples.tokens, samples.logprobs, samples.top_logprobs,
                                            strict=True):
            if seq.status is not running:  # a row of a chained step, after its sequence ended
                continue
            if not logprob > NO_CHANCE:  # NaN or -inf: every token had probability 0
                constraint = seq.params.constraint
                error = NOTHING_TO_CHOOSE if constraint is None else constraint.failure()
                events.setdefault(seq.sink, []).append(TokenEvent(seq.stream_id, error=error))
                failed.append(seq)
                continue
            seq.generated.append(token)
            produced += 1
            reason = (Finish.EOS if token == eos else Finish.LENGTH if len(seq.generated) >= seq.max_generated
                      else None)
            if seq.sink != sink:
                sink = seq.sink
                batch = events.setdefault(sink, [])
            constraint = seq.params.constraint
            if reason is None and constraint is not None and len(seq.generated) >= constraint.open_below:
                following = time.perf_counter()
                try:
                    with slow_masks_deferred():  # (no stream waits for one: holds.py)
                        made, ends = constraint.events_after(seq, token, logprob, top, followed.get(id(seq)))
                except FollowPending as pending:
                    self.holds.hold(seq, pending)
                    continue
                finally:
                    self.stats.grammar_seconds += time.perf_counter() - following
                batch.extend(made)
                produced += len(made) - 1
                if ends:
                    ended.append(seq)
                continue
            batch.append(TokenEvent(seq.stream_id, token, logprob, reason, top))
            if reason:
                ended.append(seq)
        self.stats.tokens_generated += produced
        self.endings.finish(failed)
        self.endings.finish_generations(ended)

    def _wait_for(self, step: LaunchedStep) -> None:
        waiting = time.perf_counter()
        transfers = [step.scoring.host_copy] if step.scoring else []
        if step.sampling:
            transfers.append(step.sampling.host_copy)
        for pending in transfers:
            self.backend.ops.wait_host_copy(pending)
        self.stats.device_wait_seconds += time.perf_counter() - waiting
