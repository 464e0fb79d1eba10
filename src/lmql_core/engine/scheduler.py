"""Decides, at every step, which sequences the backend runs and how many tokens each feeds.

Sequences join and leave between any two steps (continuous batching): decoding sequences feed
their last token; new ones feed their prompt in chunks within the step's token budget.

Fairness between clients: waiting sequences queue per client (their ``sink``), and the running
batch is shared. Each client with work has a fair share of the batch (``max_batch`` divided by
the clients with work); a client below its share is admitted first, round-robin, and when the
batch is full, the newest sequences of clients above their share are preempted for it: they go
back to the front of their client's queue and later feed their tokens again (recomputation).
So one client's thousand streams cannot keep another client's first token waiting for them.

The scheduler owns each sequence's ``status`` (``sequence.Status``): every transition is one of
its methods, called with the engine's lock held::

    add        -> WAITING
    schedule      WAITING -> RUNNING
    preempt       RUNNING -> WAITING   (its cache to free; it feeds everything again later)
    hold          RUNNING -> HELD      (its cache to free: a slow mask is computed meanwhile)
    unhold        HELD -> WAITING (first in its client's queue) or FINISHED
    finish        RUNNING -> FINISHED  (its last event made, or its batch failed)
    take_over     RUNNING -> FINISHED for one sequence, and its stream's next -> RUNNING in its
                  place (with its cache: a template's next hole, ``backend.TakesOver``)
    cancel        WAITING, HELD -> CANCELLED (gone at once) and RUNNING -> CANCELLED (its cache to
                  free: ``take_cancelled`` hands it to the engine thread between two steps)
    finish_all    WAITING, RUNNING, HELD -> FINISHED (the server stops)
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, KeysView
from dataclasses import dataclass
from typing import Any

from lmql_core.engine.sequence import Kind, Sequence, Status


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    tokens: list[int]
    # whether these tokens end the prompt (the next token is sampled): fixed when scheduled, since
    # the engine counts them as fed (``num_fed``) before it decides what to sample
    completes_prefill: bool


def chunk_of(seq: Sequence, tokens: list[int]) -> ScheduledChunk:
    return ScheduledChunk(seq, tokens, seq.num_fed + len(tokens) >= seq.length)


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

    def clients(self) -> KeysView[Any]:
        """The clients with sequences waiting, in turn order (a view: not to be kept while
        sequences are taken)."""
        return self._queues.keys()

    def count_of(self, client: Any) -> int:
        return len(self._queues.get(client, ()))

    def peek(self, client: Any) -> Sequence:
        """The sequence ``take(client)`` would return, left in the queue."""
        return self._queues[client][0]

    def take(self, client: Any) -> Sequence:
        """The next sequence of ``client``, who then goes to the end of the turn order."""
        queue = self._queues.pop(client)
        seq = queue.popleft()
        if queue:
            self._queues[client] = queue
        self._count -= 1
        return seq

    def remove(self, seqs: list[Sequence]) -> None:
        """Take ``seqs`` (all of them waiting here) out of their queues; only their clients'
        queues are rebuilt, and every client keeps its place in the turn order."""
        gone: dict[Any, set[int]] = {}
        for seq in seqs:
            gone.setdefault(seq.sink, set()).add(id(seq))
        for client, ids in gone.items():
            kept = deque(s for s in self._queues[client] if id(s) not in ids)
            if kept:
                self._queues[client] = kept
            else:
                del self._queues[client]
        self._count -= len(seqs)

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0


class Scheduler:
    def __init__(self, max_batch: int = 64, token_budget: int = 8192) -> None:
        self.max_batch = max_batch
        self.token_budget = token_budget
        self.waiting = FairQueue()
        self.running: list[Sequence] = []  # in the order they were admitted
        # the same sequences by client, each client's in the order they were admitted (a dict as
        # an ordered set): the counts of the fair share and the newest to preempt, without a
        # scan of the batch per sequence admitted or preempted
        self._running_of: dict[Any, dict[Sequence, None]] = {}
        self._cancelled_running: list[Sequence] = []  # cancelled while running: caches to free
        self.held: dict[Sequence, None] = {}  # (an ordered set)
        self.taken_over = 0  # sequences that went on in their stream's last one's place (``take_over``)

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._cancelled_running)

    def is_steady(self, seqs: list[Sequence]) -> bool:
        """``seqs`` (running sequences) are the whole batch, and no cancelled one's cache waits
        to be freed (``take_cancelled``)."""
        return not self._cancelled_running and len(seqs) == len(self.running)

    def fits_waiting(self) -> bool:
        """Every waiting sequence can join the batch without preempting anyone, and none of them
        is a SCORE request (``admit`` takes them beside a chained step)."""
        return (len(self.running) + len(self.waiting) <= self.max_batch
                and all(seq.kind is Kind.GENERATE for seq in self.waiting))

    def admit(self) -> list[ScheduledChunk]:
        """Waiting generations into the batch while it has room, within the token budget, without
        preemption (a SCORE request stops it): their prompt chunks, fed beside a chained step."""
        chunks: list[ScheduledChunk] = []
        if self.waiting and len(self.running) < self.max_batch:
            self._admit(chunks, self.token_budget, False, generations_only=True)
        return chunks

    def cancel(self, seqs: list[Sequence]) -> list[Sequence]:
        """Cancel those of ``seqs`` still waiting or running; returns them. A waiting one is
        gone at once; a running one leaves the batch, its cache freed after ``take_cancelled``."""
        waiting = self._leave([s for s in seqs if s.status is Status.WAITING], Status.CANCELLED)
        running = self._leave([s for s in seqs if s.status is Status.RUNNING], Status.CANCELLED)
        held = self._leave([s for s in seqs if s.status is Status.HELD], Status.CANCELLED)
        self.waiting.remove(waiting)
        for seq in held:
            del self.held[seq]
        if running:
            self._leave_batch(running)
            self._cancelled_running.extend(running)
        return waiting + running + held

    def take_cancelled(self) -> list[Sequence]:
        """The cancelled sequences whose caches the backend still holds (for the caller to free)."""
        taken, self._cancelled_running = self._cancelled_running, []
        return taken

    def finish(self, seqs: list[Sequence]) -> list[Sequence]:
        """End those of ``seqs`` still running (not cancelled or ended meanwhile); returns them:
        their caches are for the caller to free."""
        ended = self._leave([s for s in seqs if s.status is Status.RUNNING], Status.FINISHED)
        if ended:
            self._leave_batch(ended)
        return ended

    def take_over(self, seq: Sequence, following: Sequence) -> None:
        """Running ``seq`` ends, and ``following`` (new, of the same client) runs in its place
        in the batch, with the cache the backend passed on to it. ``taken_over`` counts them:
        a chained step's batch is then not the last one's rows (``pipeline.py``)."""
        assert seq.status is Status.RUNNING and following.sink is seq.sink
        seq.status, following.status = Status.FINISHED, Status.RUNNING
        self.running[self.running.index(seq)] = following
        mine = self._running_of[seq.sink]
        del mine[seq]
        mine[following] = None
        self.taken_over += 1

    def hold(self, seq: Sequence) -> int | None:
        """Take running ``seq`` out of the batch until ``unhold``; returns the backend id whose
        cache the caller frees (it feeds everything again later, as a preempted one), or None
        where ``seq`` no longer runs (cancelled meanwhile)."""
        if seq.status is not Status.RUNNING:
            return None
        freed = seq.seq_id
        seq.status = Status.HELD
        self._leave_batch([seq])
        self.held[seq] = None
        seq.restart()
        return freed

    def unhold(self, seq: Sequence, finished: bool) -> None:
        """Held ``seq`` ends (``finished``) or goes first in its client's queue."""
        del self.held[seq]
        seq.status = Status.FINISHED if finished else Status.WAITING
        if not finished:
            self.waiting.put_back(seq)

    @staticmethod
    def _leave(seqs: list[Sequence], status: Status) -> list[Sequence]:
        """Give ``seqs`` their final ``status``; returns them, each once."""
        left = []
        for seq in seqs:
            if not seq.done:
                seq.status = status
                left.append(seq)
        return left

    def _join_batch(self, seq: Sequence) -> None:
        seq.status = Status.RUNNING
        self.running.append(seq)
        self._running_of.setdefault(seq.sink, {})[seq] = None

    def _leave_batch(self, seqs: list[Sequence]) -> None:
        """``seqs``, running until now and given another status, out of the batch."""
        for seq in seqs:
            mine = self._running_of[seq.sink]
            del mine[seq]
            if not mine:
                del self._running_of[seq.sink]
        self.running = [s for s in self.running if s.status is Status.RUNNING]

    def finish_all(self) -> tuple[list[Sequence], list[Sequence]]:
        """End every sequence (the server stops): (all that were waiting or running, those
        among them or cancelled whose caches the backend still holds)."""
        holding = self.running + self.take_cancelled()
        ended = self._leave(list(self.waiting) + self.running + list(self.held), Status.FINISHED)
        self.running = []
        self._running_of.clear()
        self.waiting.clear()
        self.held.clear()
        return ended, holding

    def _share(self) -> int:
        """Each client's share of the batch: the same through a step's admissions (a client
        admitted runs, so the clients with work stay the same)."""
        clients = len(self._running_of) + sum(c not in self._running_of for c in self.waiting.clients())
        return max(1, self.max_batch // max(1, clients))

    def _running_count(self, client: Any) -> int:
        return len(self._running_of.get(client, ()))

    def preempt(self) -> list[int]:
        """Make room for waiting clients below their share: running sequences go back to the
        front of their clients' queues, newest first from the clients furthest above it.
        Returns the backend ids they had, whose caches the caller frees."""
        if not self.waiting:
            return []
        share = self._share()
        wanted = 0
        for client in self.waiting.clients():
            running = self._running_count(client)
            if running < share:
                wanted += min(share - running, self.waiting.count_of(client))
        needed = wanted - (self.max_batch - len(self.running))  # beyond the free slots
        # nobody above the share (nobody running, say: more clients want a share than the batch
        # holds, and none runs yet): nobody to preempt
        if needed <= 0 or all(len(mine) <= share for mine in self._running_of.values()):
            return []
        victims = self._victims(needed, share)
        if not victims:
            return []
        freed = [s.seq_id for s in victims]
        for seq in victims:  # newest first: each client's oldest preempted sequence ends up in front
            seq.restart()
            seq.status = Status.WAITING
            self.waiting.put_back(seq)
        self.running = [s for s in self.running if s.status is Status.RUNNING]
        return freed

    def _victims(self, needed: int, share: int) -> list[Sequence]:
        """Up to ``needed`` sequences to preempt, taken out of ``_running_of``: one at a time,
        the newest generation of the client running the most (of those running as many, the
        one whose oldest sequence runs longest), while that client runs more than its share
        and has a generation to give."""
        rank = self._client_ranks()
        most = [(-len(mine), rank[client], client) for client, mine in self._running_of.items()]
        heapq.heapify(most)
        victims: list[Sequence] = []
        while len(victims) < needed:
            negative_count, order, client = most[0]
            if -negative_count <= share:
                break
            mine = self._running_of[client]  # (it keeps its share, so never empties here)
            victim = next((s for s in reversed(mine) if s.kind is Kind.GENERATE), None)
            if victim is None:
                break
            del mine[victim]
            victims.append(victim)
            heapq.heapreplace(most, (negative_count + 1, order, client))
        return victims

    def _client_ranks(self) -> dict[Any, int]:
        """Each running client's place in the order their oldest running sequences were admitted."""
        rank: dict[Any, int] = {}
        for seq in self.running:
            rank.setdefault(seq.sink, len(rank))
            if len(rank) == len(self._running_of):
                break
        return rank

    def schedule(self) -> list[ScheduledChunk]:
        chunks: list[ScheduledChunk] = []
        budget, prefilling = self._running_chunks(chunks)
        if self.waiting and len(self.running) < self.max_batch and budget > 0:
            self._admit(chunks, budget, prefilling)
        return chunks

    def _running_chunks(self, chunks: list[ScheduledChunk]) -> tuple[int, bool]:
        """The running sequences' chunks, into ``chunks``: (the budget left, whether a prompt
        chunk feeds). Once a step for every row: ``Sequence.unfed`` and ``in_prefill`` inlined."""
        budget = self.token_budget
        prefilling = False
        for seq in self.running:
            fixed = len(seq.prompt) + len(seq.scored)
            fed = seq.num_fed
            take = seq.generated[fed - fixed :] if fed >= fixed else seq.tokens[fed:]
            if len(take) > budget and seq.kind is not Kind.SCORE:  # a SCORE feeds whole
                take = take[: max(1, budget)]
            if not take:  # its last step's results are not back yet (a step launched ahead)
                continue
            prefilling = prefilling or fed < fixed
            chunks.append(ScheduledChunk(seq, take, fed + len(take) >= fixed + len(seq.generated)))
            budget -= len(take)
        return budget, prefilling

    def _admit(self, chunks: list[ScheduledChunk], budget: int, prefilling: bool,
               generations_only: bool = False) -> None:
        """Waiting sequences into the batch while it has room and the step has ``budget``: each
        from the first client in turn below its share, or without one, the first in turn."""
        share = self._share()
        # the clients below their share, in turn order: none rises back below it in a step (their
        # counts only grow), and a client admitted goes last in the turn, as in ``FairQueue.take``
        below = deque(c for c in self.waiting.clients() if self._running_count(c) < share)
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            client = below[0] if below else next(iter(self.waiting.clients()))
            seq = self.waiting.peek(client)
            if generations_only and seq.kind is not Kind.GENERATE:
                break
            # A scored request runs whole: its log-probs need every position in one pass. One
            # that does not fit the budget left waits for the next step (where it comes first),
            # so a step's prompts stay within one pass of the backend's (see ``token_budget``).
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[:budget]
            if len(take) > budget and prefilling:
                break
            self.waiting.take(client)
            self._join_batch(seq)
            if below:
                below.popleft()
                if self.waiting.count_of(client) and self._running_count(client) < share:
                    below.append(client)
            chunks.append(chunk_of(seq, take))
            budget -= len(take)
            prefilling = True
