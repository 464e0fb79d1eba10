"""Decides, at every step, which sequences the backend runs and how many tokens each feeds.

Sequences join and leave between any two steps (continuous batching): decoding sequences feed
their last token; new ones feed their prompt in chunks within the step's token budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmql_core.engine.sequence import Kind, Sequence


@dataclass
class ScheduledChunk:
    seq: Sequence
    tokens: list[int]

    @property
    def completes_prefill(self) -> bool:
        return self.seq.num_fed + len(self.tokens) >= self.seq.length


class Scheduler:
    def __init__(self, max_batch: int = 64, token_budget: int = 2048) -> None:
        self.max_batch = max_batch
        self.token_budget = token_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def drop_cancelled(self) -> list[Sequence]:
        dropped = [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]
        self.running = [s for s in self.running if not s.cancelled]
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        return dropped

    def drop_finished(self) -> None:
        self.running = [s for s in self.running if not s.finished]

    def schedule(self) -> list[ScheduledChunk]:
        chunks: list[ScheduledChunk] = []
        budget = self.token_budget
        for seq in self.running:
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[: max(1, budget)]
            chunks.append(ScheduledChunk(seq, take))
            budget -= len(take)
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            seq = self.waiting.popleft()
            self.running.append(seq)
            # A scored request runs whole: its log-probs need every position in one pass.
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[:budget]
            chunks.append(ScheduledChunk(seq, take))
            budget -= len(take)
        return chunks
