"""Decides, at every step, which sequences the backend runs and how many tokens each feeds.

Sequences join and leave between any two steps (continuous batching): decoding sequences feed
their last token; new ones feed their prompt in chunks within the step's token budget.

Fairness between clients: waiting sequences queue per client (their ``sink``), and the running
batch is shared. Each client with work has a fair share of the batch (``max_batch`` divided by
the clients with work); a client below its share is admitted first, round-robin, and when the
batch is full, the newest sequences of clients above their share are preempted for it: they go
back to the front of their client's queue and later feed their tokens again (recomputation).
So one client's thousand streams cannot keep another client's first token waiting for them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lmql_core.engine.sequence import Kind, Sequence


@dataclass
class ScheduledChunk:
    seq: Sequence
    tokens: list[int]

    @property
    def completes_prefill(self) -> bool:
        return self.seq.num_fed + len(self.tokens) >= self.seq.length


class FairQueue:
    """Waiting sequences, one FIFO per client, taken from the clients in turn."""

    def __init__(self) -> None:
        self._queues: dict[Any, deque[Sequence]] = {}  # in turn order: the next client first
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Sequence]:
        for queue in list(self._queues.values()):
            yield from queue

    def append(self, seq: Sequence) -> None:
        self._queues.setdefault(seq.sink, deque()).append(seq)
        self._count += 1

    def put_back(self, seq: Sequence) -> None:
        """A preempted sequence: first of its client's queue again."""
        self._queues.setdefault(seq.sink, deque()).appendleft(seq)
        self._count += 1

    def clients(self) -> list[Any]:
        return list(self._queues)

    def count_of(self, client: Any) -> int:
        return len(self._queues.get(client, ()))

    def take(self, client: Any) -> Sequence:
        """The next sequence of ``client``, who then goes to the end of the turn order."""
        queue = self._queues.pop(client)
        seq = queue.popleft()
        if queue:
            self._queues[client] = queue
        self._count -= 1
        return seq

    def remove_cancelled(self) -> list[Sequence]:
        removed = [s for s in self if s.cancelled]
        if removed:
            kept = {c: deque(s for s in q if not s.cancelled) for c, q in self._queues.items()}
            self._queues = {c: q for c, q in kept.items() if q}
            self._count -= len(removed)
        return removed

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0


class Scheduler:
    def __init__(self, max_batch: int = 64, token_budget: int = 2048) -> None:
        self.max_batch = max_batch
        self.token_budget = token_budget
        self.waiting = FairQueue()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def drop_cancelled(self) -> list[Sequence]:
        dropped = [s for s in self.running if s.cancelled] + self.waiting.remove_cancelled()
        self.running = [s for s in self.running if not s.cancelled]
        return dropped

    def drop_finished(self) -> None:
        self.running = [s for s in self.running if not s.finished]

    def _share(self) -> int:
        clients = set(self.waiting.clients()) | {s.sink for s in self.running}
        return max(1, self.max_batch // max(1, len(clients)))

    def preempt(self) -> list[Sequence]:
        """Running sequences to make room for waiting clients below their share, newest first
        from the clients furthest above it. The caller frees their caches, then ``requeue``s them."""
        if not self.waiting:
            return []
        share, counts = self._share(), Counter(s.sink for s in self.running)
        wanted = sum(min(share - counts[c], self.waiting.count_of(c))
                     for c in self.waiting.clients() if counts[c] < share)
        needed = wanted - (self.max_batch - len(self.running))  # beyond the free slots
        victims: list[Sequence] = []
        for _ in range(max(0, needed)):
            client, running = counts.most_common(1)[0]
            victim = next((s for s in reversed(self.running) if s.sink == client
                           and s.kind is Kind.GENERATE and s not in victims), None)
            if running <= share or victim is None:
                break
            victims.append(victim)
            counts[client] -= 1
        if victims:
            self.running = [s for s in self.running if s not in victims]
        return victims

    def requeue(self, seqs: list[Sequence]) -> None:
        for seq in seqs:  # newest first: each client's oldest preempted sequence ends up in front
            seq.restart()
            self.waiting.put_back(seq)

    def schedule(self) -> list[ScheduledChunk]:
        chunks: list[ScheduledChunk] = []
        budget = self.token_budget
        for seq in self.running:
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[: max(1, budget)]
            chunks.append(ScheduledChunk(seq, take))
            budget -= len(take)
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            seq = self.waiting.take(self._next_client())
            self.running.append(seq)
            # A scored request runs whole: its log-probs need every position in one pass.
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[:budget]
            chunks.append(ScheduledChunk(seq, take))
            budget -= len(take)
        return chunks

    def _next_client(self) -> Any:
        """The first client in turn below its share; without one, the first in turn."""
        clients = self.waiting.clients()
        share, counts = self._share(), Counter(s.sink for s in self.running)
        return next((c for c in clients if counts[c] < share), clients[0])
