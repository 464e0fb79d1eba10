"""What the engine thread keeps of its steps: a step launched on the device, and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmql_core.engine.sampling import PendingSamples, PendingScores
from lmql_core.engine.sequence import Sequence


@dataclass
class LaunchedStep:
    """A step whose work is queued on the device; its results are read by ``Collector.collect``."""

    sampled: list[Sequence]  # the rows that sample, in the order of ``sampling``'s rows
    sampling: PendingSamples | None
    scored: list[Sequence]  # the SCORE requests it runs, whose log-probs ``scoring`` computes
    scoring: PendingScores | None
    started: float
    # tokens the sampled sequences surely generate after this step (length limits; EOS aside)
    headroom: int = 0
    # a chained step: the seq_ids it appended a sampled token to, whose values the host confirms
    chained_ids: list[int] | None = None
    # a chained step of constrained sequences: its logits, sampled (``StepLauncher.sample_chained``)
    # once the constraints followed the last step's tokens (which forces some rows' next tokens)
    unsampled: Any = None
    # a chained step: every row it fed, in the order of its forward pass (the whole running batch);
    # ``sampled`` may be fewer (rows fed a forced token that is not their last). None: ``sampled``
    batch: list[Sequence] | None = None


# a sequence waits to join a batch with no room for it (or a SCORE request waits); every sequence
# ended, or a cancelled one's cache waits to be freed; forced tokens too many to feed one a step
# (``pipeline.IDLE_ROWS_SHARE``), or a prompt left to feed; a sequence's length limit; the step
# sampled nothing (a step launched ahead follows); the backend declined
# (``ChainedSteps.forward_sampled``); repetition penalties or SCORE requests in the step
CHAIN_BREAKS = ("waiting", "ended", "forced", "length", "nothing sampled", "backend", "other")
# the engine thread's busy time by part of its loop: launching steps (the pipelined one's forward
# pass, prompts admitted beside it), handing events to the clients, reading a step's results (the
# device's wait, following constraints, sampling a chained step), and the scheduler's work (idle
# waits excluded)
PHASES = ("launch", "deliver", "collect", "schedule")


@dataclass
class EngineStats:
    steps: int = 0
    steps_chained: int = 0
    # forced tokens (a constraint's fast-forward) fed one a row in chained steps, beside sampled ones
    tokens_forced_chained: int = 0
    # waiting generations admitted beside a chained step (their prompts fed after it), not breaking it
    sequences_admitted_chained: int = 0
    prompt_passes_chained: int = 0  # the passes that fed them (several may share one)
    # sequences that went on in their stream's last one's place and cache (a template's next hole)
    sequences_taken_over: int = 0
    admissions_deferred: int = 0  # chained steps that left waiting generations for a later one
    # why a step that sampled was not followed by a chained step, on a backend that chains
    # (``Pipeline._unchained``): by reason, each of CHAIN_BREAKS
    chain_breaks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHAIN_BREAKS, 0))
    steps_ahead: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    sequences_finished: int = 0
    sequences_cancelled: int = 0
    sequences_preempted: int = 0  # made way for other clients (see scheduler.py); they run again
    sequences_held: int = 0  # out of the batch while a slow mask was computed (holds.py)
    last_step_seconds: float = 0.0
    busy_seconds: float = 0.0  # the engine thread at work, idle waits for requests excluded
    arrival_waits: int = 0  # wake-ups that waited for a burst's companions (engine.ARRIVAL_QUIET_S)
    arrival_wait_seconds: float = 0.0
    device_wait_seconds: float = 0.0  # of which blocked until a step's results reached the host
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    # grammars (engine/constraints.py): filling masks (on another thread, beside the forward
    # pass), the part of it the engine thread waited for after the pass, and following the
    # sampled tokens (taking them, fast-forward) on the engine thread
    mask_fill_seconds: float = 0.0
    mask_wait_seconds: float = 0.0
    grammar_seconds: float = 0.0
