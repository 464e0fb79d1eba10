"""The scheduler on its own (no engine thread, no backend): fair shares between clients,
which sequences preemption picks and where they queue again, the token budget of a step, and
every status transition, cancellation included. Each step here does what the engine does
between two steps: ``schedule``, then count the fed tokens."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from lmql_core.engine.scheduler import ScheduledChunk, Scheduler
from lmql_core.engine.sequence import Kind, SamplingParams, Sequence, Status, TokenEvent

Client = Callable[[list[TokenEvent]], None]


def client() -> Client:
    """A client is its sink: sequences with the same sink belong to the same client."""
    def sink(events: list[TokenEvent]) -> None:
        pass
    return sink


def request(sink: Client, name: str, prompt_length: int = 3, kind: Kind = Kind.GENERATE) -> Sequence:
    scored = [1, 2] if kind is Kind.SCORE else []
    return Sequence(name, list(range(1, prompt_length + 1)), SamplingParams(max_tokens=8), sink, kind, scored)


def step(scheduler: Scheduler) -> list[ScheduledChunk]:
    """One step as the engine runs it: the chunks, their tokens then fed to the backend, and a
    token sampled for each generation whose prompt is all fed (the next step feeds it)."""
    chunks = scheduler.schedule()
    for chunk in chunks:
        chunk.seq.num_fed += len(chunk.tokens)
        if chunk.seq.kind is Kind.GENERATE and not chunk.seq.unfed:
            chunk.seq.generated.append(7)
    return chunks


def started(max_batch: int, *streams: str) -> tuple[Scheduler, list[Sequence]]:
    """A scheduler that queued one client's ``streams`` and ran a step."""
    scheduler, sink = Scheduler(max_batch=max_batch), client()
    seqs = [request(sink, name) for name in streams]
    for seq in seqs:
        scheduler.add(seq)
    step(scheduler)
    return scheduler, seqs


def names(seqs: list[Sequence]) -> list[str]:
    return [seq.stream_id for seq in seqs]


def test_clients_below_their_share_are_admitted_in_turn() -> None:
    """Client a queued six before b's two; the batch of four is shared two and two, admitted
    a, b, a, b; a's others wait."""
    a, b = client(), client()
    scheduler = Scheduler(max_batch=4)
    for i in range(6):
        scheduler.add(request(a, f"a{i}"))
    for i in range(2):
        scheduler.add(request(b, f"b{i}"))
    chunks = step(scheduler)
    assert names([c.seq for c in chunks]) == ["a0", "b0", "a1", "b1"]
    assert names(list(scheduler.waiting)) == ["a2", "a3", "a4", "a5"]


def test_a_lone_client_fills_the_batch_and_a_newcomer_preempts_its_newest() -> None:
    """a runs four of four; b arrives with two: a's two newest make way (their caches to free,
    their ids returned), and queue first again, oldest in front, to feed everything anew."""
    a, b = client(), client()
    scheduler = Scheduler(max_batch=4)
    seqs = [request(a, f"a{i}") for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    step(scheduler)
    old_ids = [seq.seq_id for seq in seqs]
    scheduler.add(request(b, "b0"))
    scheduler.add(request(b, "b1"))
    freed = scheduler.preempt()
    assert freed == [old_ids[3], old_ids[2]]  # newest first
    assert [seq.status for seq in seqs] == [Status.RUNNING] * 2 + [Status.WAITING] * 2
    assert [seq.num_fed for seq in seqs[2:]] == [0, 0] and seqs[2].seq_id not in old_ids
    assert names([c.seq for c in step(scheduler)]) == ["a0", "a1", "b0", "b1"]
    assert names(list(scheduler.waiting)) == ["a2", "a3"]


def test_no_preemption_within_shares_nor_of_scored_requests() -> None:
    a, b = client(), client()
    within = Scheduler(max_batch=4)
    for name in ("a0", "a1"):
        within.add(request(a, name))
    step(within)
    within.add(request(b, "b0"))
    assert within.preempt() == []  # a free slot is left for b

    scoring = Scheduler(max_batch=2)
    for name in ("a0", "a1"):
        scoring.add(request(a, name, kind=Kind.SCORE))
    step(scoring)
    scoring.add(request(b, "b0"))
    assert scoring.preempt() == []  # a scored request runs whole, once


def test_the_token_budget_chunks_prompts_and_always_lets_decoding_rows_step() -> None:
    scheduler = Scheduler(max_batch=8, token_budget=10)
    sink = client()
    long, short = request(sink, "long", prompt_length=25), request(sink, "short", prompt_length=4)
    scheduler.add(long)
    scheduler.add(short)
    assert [len(c.tokens) for c in step(scheduler)] == [10]  # the budget is spent on long's prompt
    chunks = step(scheduler)  # 20 of 25 fed now: no token is sampled yet, though the engine
    # counts the chunk as fed before it asks which sequences sample
    assert [(c.seq.stream_id, len(c.tokens), c.completes_prefill) for c in chunks] == [("long", 10, False)]
    chunks = step(scheduler)  # long's last 5; short's prompt of 4 fits the 5 left
    assert [(c.seq.stream_id, len(c.tokens), c.completes_prefill) for c in chunks] == [
        ("long", 5, True), ("short", 4, True)]
    big = request(sink, "big", prompt_length=30)
    scheduler.add(big)
    chunks = step(scheduler)  # two decode rows of one token, then 8 tokens of big's prompt
    assert [(c.seq.stream_id, len(c.tokens)) for c in chunks] == [("long", 1), ("short", 1), ("big", 8)]


def test_a_scored_request_feeds_whole_beyond_the_budget() -> None:
    scheduler = Scheduler(max_batch=8, token_budget=4)
    seq = request(client(), "s", prompt_length=10, kind=Kind.SCORE)
    scheduler.add(seq)
    chunks = step(scheduler)
    assert len(chunks[0].tokens) == 12 and chunks[0].completes_prefill


def test_a_scored_request_beyond_the_budget_left_waits_for_the_next_step() -> None:
    """SCOREs fill a step up to the budget; the next waits (so a step is one packed pass of the
    backend's), then comes first, and runs whole even when it alone exceeds the budget."""
    scheduler, sink = Scheduler(max_batch=8, token_budget=10), client()
    seqs = [request(sink, f"s{i}", prompt_length=3, kind=Kind.SCORE) for i in range(3)]  # 5 tokens each
    big = request(sink, "big", prompt_length=20, kind=Kind.SCORE)
    for seq in [*seqs, big]:
        scheduler.add(seq)
    assert [c.seq.stream_id for c in step(scheduler)] == ["s0", "s1"]
    scheduler.finish(seqs[:2])
    assert [c.seq.stream_id for c in step(scheduler)] == ["s2"]  # big (22) does not fit the 5 left
    scheduler.finish(seqs[2:])
    chunks = step(scheduler)
    assert [(c.seq.stream_id, len(c.tokens)) for c in chunks] == [("big", 22)]


def test_status_follows_each_transition() -> None:
    scheduler = Scheduler(max_batch=4)
    seq = request(client(), "s")
    scheduler.add(seq)
    assert seq.status is Status.WAITING and not seq.done
    step(scheduler)
    assert seq.status is Status.RUNNING and scheduler.running == [seq]
    assert scheduler.finish([seq]) == [seq]
    assert seq.status is Status.FINISHED and seq.done and scheduler.running == []
    assert scheduler.finish([seq]) == [] and scheduler.cancel([seq]) == []  # ended stays ended
    assert seq.status is Status.FINISHED and not scheduler.has_work()


def test_cancel_while_waiting_is_gone_at_once() -> None:
    scheduler, (first, second) = started(1, "first", "second")
    assert second.status is Status.WAITING
    assert scheduler.cancel([second]) == [second]
    assert second.status is Status.CANCELLED and list(scheduler.waiting) == []
    assert scheduler.take_cancelled() == []  # it held no cache
    assert names([c.seq for c in step(scheduler)]) == ["first"]


def test_cancel_while_running_leaves_the_batch_and_hands_its_cache_over_once() -> None:
    scheduler, (kept, cancelled) = started(4, "kept", "cancelled")
    assert scheduler.is_steady([kept, cancelled])
    assert scheduler.cancel([cancelled, cancelled]) == [cancelled]
    assert cancelled.status is Status.CANCELLED and scheduler.running == [kept]
    assert not scheduler.is_steady([kept, cancelled]) and not scheduler.is_steady([kept])
    assert scheduler.finish([cancelled]) == []  # a step in flight ends: it stays cancelled
    assert scheduler.take_cancelled() == [cancelled] and scheduler.take_cancelled() == []
    assert scheduler.is_steady([kept])
    assert names([c.seq for c in step(scheduler)]) == ["kept"]


def test_finish_all_ends_everything_and_names_the_caches_held() -> None:
    scheduler, seqs = started(2, "r0", "r1", "w0")
    scheduler.cancel([seqs[1]])
    ended, holding = scheduler.finish_all()
    assert names(ended) == ["w0", "r0"] and names(holding) == ["r0", "r1"]
    assert [seq.status for seq in seqs] == [Status.FINISHED, Status.CANCELLED, Status.FINISHED]
    assert not scheduler.has_work()


def test_a_held_sequence_leaves_the_batch_and_its_cache_then_queues_first_or_ends() -> None:
    scheduler, (held, other) = started(4, "held", "other")
    old_id, fed = held.seq_id, held.num_fed
    assert fed > 0 and scheduler.hold(held) == old_id  # the cache to free: it feeds everything again
    assert held.status is Status.HELD and held.seq_id != old_id and held.num_fed == 0
    assert scheduler.running == [other] and scheduler.is_steady([other]) and not held.done
    assert names([c.seq for c in step(scheduler)]) == ["other"]  # it sits out
    late = request(held.sink, "late")  # the same client's
    scheduler.add(late)
    scheduler.unhold(held, finished=False)
    assert held.status is Status.WAITING and names(list(scheduler.waiting))[0] == "held"
    chunks = step(scheduler)
    assert names([c.seq for c in chunks]) == ["other", "held", "late"]
    assert chunks[1].tokens == held.prompt + held.generated[:-1]  # (a token was sampled in ``step``)
    scheduler.hold(held)
    scheduler.unhold(held, finished=True)
    assert held.status is Status.FINISHED and held.done and not scheduler.held


def test_a_held_sequence_cancelled_or_ended_by_finish_all_holds_no_cache() -> None:
    scheduler, (cancelled, stopped, running) = started(4, "cancelled", "stopped", "running")
    scheduler.hold(cancelled)
    scheduler.hold(stopped)
    assert scheduler.cancel([cancelled]) == [cancelled]
    assert cancelled.status is Status.CANCELLED and scheduler.take_cancelled() == []
    assert scheduler.hold(cancelled) is None  # (a step's token, followed after the cancel)
    ended, holding = scheduler.finish_all()
    assert names(ended) == ["running", "stopped"] and names(holding) == ["running"]
    assert stopped.status is Status.FINISHED and not scheduler.held and not scheduler.has_work()


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_every_client_gets_its_share_of_any_batch(max_batch: int) -> None:
    clients = [client() for _ in range(3)]
    scheduler = Scheduler(max_batch=max_batch)
    for i in range(10):
        for n, sink in enumerate(clients):
            scheduler.add(request(sink, f"c{n}-{i}"))
    running = [c.seq for c in step(scheduler)]
    counts = [sum(seq.sink is sink for seq in running) for sink in clients]
    assert len(running) == max_batch and max(counts) - min(counts) <= 1


def test_a_step_launched_ahead_skips_the_sequences_still_waiting_for_results() -> None:
    """After a step of SCOREs (fed whole, log-probs not back yet) the next step, launched
    ahead, takes only the waiting requests: nothing of the running ones is fed twice."""
    scheduler = Scheduler(max_batch=8, token_budget=5)
    sink = client()
    first, second = (request(sink, name, kind=Kind.SCORE) for name in ("s0", "s1"))
    scheduler.add(first)
    scheduler.add(second)
    assert names([c.seq for c in scheduler.schedule()]) == ["s0"]  # 5 tokens: the budget
    first.num_fed = first.length
    assert [(c.seq.stream_id, len(c.tokens)) for c in scheduler.schedule()] == [("s1", 5)]
    assert [s.status for s in (first, second)] == [Status.RUNNING] * 2


def test_more_clients_than_the_batch_holds_arriving_at_once_preempt_nothing() -> None:
    """Three clients, one request each, a batch of two, nothing running yet: each client's share
    is one, so three want a place the batch lacks; nobody runs, so nobody is preempted (this
    raised IndexError in the engine thread, which then served nothing more)."""
    scheduler = Scheduler(max_batch=2)
    for name in ("a0", "b0", "c0"):
        scheduler.add(request(client(), name))
    assert scheduler.preempt() == []
    assert names([c.seq for c in step(scheduler)]) == ["a0", "b0"]


def test_cancelling_waiting_sequences_keeps_each_clients_turn() -> None:
    """a, b, c queued in turn; a's only request and one of b's two are cancelled: b keeps its
    turn ahead of c, and its other request its place; the queue counts what is left."""
    a, b, c = client(), client(), client()
    scheduler = Scheduler(max_batch=1)
    seqs = {name: request(sink, name) for name, sink in [("a0", a), ("b0", b), ("c0", c), ("b1", b)]}
    for seq in seqs.values():
        scheduler.add(seq)
    assert scheduler.cancel([seqs["a0"], seqs["b0"]]) == [seqs["a0"], seqs["b0"]]
    assert names(list(scheduler.waiting)) == ["b1", "c0"] and len(scheduler.waiting) == 2
    assert names([chunk.seq for chunk in step(scheduler)]) == ["b1"]


# --- the scheduler against a brute-force reference of its rules, on random traffic -----------

class Reference:
    """The rules of scheduler.py's docstring, recomputed from scratch for every decision: counts
    by scanning the batch, the share from every client with work, one victim at a time. It
    predicts a call's outcome from the scheduler's state just before it."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.max_batch, self.budget = scheduler.max_batch, scheduler.token_budget
        self.running = list(scheduler.running)
        self.queues: dict[Client, list[Sequence]] = {}  # in turn order
        for seq in scheduler.waiting:
            self.queues.setdefault(seq.sink, []).append(seq)

    def count(self, sink: Client) -> int:
        return sum(seq.sink is sink for seq in self.running)

    def share(self) -> int:
        clients = {seq.sink for seq in self.running} | set(self.queues)
        return max(1, self.max_batch // max(1, len(clients)))

    def preempt(self) -> tuple[list[Sequence], list[list[Sequence]]]:
        """(the victims in the order taken, each client's queue after, in turn order)."""
        share = self.share()
        wanted = sum(min(share - self.count(c), len(q)) for c, q in self.queues.items() if self.count(c) < share)
        needed = wanted - (self.max_batch - len(self.running))
        victims: list[Sequence] = []
        while self.queues and len(victims) < needed and self.running:
            # the client running the most; of equals, the one whose oldest runs longest
            first_seen = list(dict.fromkeys(seq.sink for seq in self.running))
            sink = max(first_seen, key=lambda c: (self.count(c), -first_seen.index(c)))
            newest = [s for s in self.running if s.sink is sink and s.kind is Kind.GENERATE]
            if self.count(sink) <= share or not newest:
                break
            victims.append(newest[-1])
            self.running.remove(newest[-1])
        for seq in victims:
            self.queues.setdefault(seq.sink, []).insert(0, seq)
        return victims, list(self.queues.values())

    def schedule(self) -> list[tuple[Sequence, list[int], bool]]:
        """The chunks (sequence, tokens, whether they end its prompt) of the next step."""
        chunks, budget, prefilling = [], self.budget, False
        for seq in self.running:
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[: max(1, budget)]
            if take:
                prefilling = prefilling or seq.in_prefill
                chunks.append((seq, take, seq.num_fed + len(take) == seq.length))
                budget -= len(take)
        while self.queues and len(self.running) < self.max_batch and budget > 0:
            share = self.share()
            below = [c for c in self.queues if self.count(c) < share]
            sink = below[0] if below else next(iter(self.queues))
            seq = self.queues[sink][0]
            take = seq.unfed if seq.kind is Kind.SCORE else seq.unfed[:budget]
            if len(take) > budget and prefilling:
                break
            queue = self.queues.pop(sink)[1:]
            if queue:  # the client goes to the end of the turn order
                self.queues[sink] = queue
            self.running.append(seq)
            chunks.append((seq, take, seq.num_fed + len(take) == seq.length))
            budget -= len(take)
            prefilling = True
        return chunks


def queues_of(scheduler: Scheduler) -> list[list[Sequence]]:
    queues: dict[Client, list[Sequence]] = {}
    for seq in scheduler.waiting:
        queues.setdefault(seq.sink, []).append(seq)
    return list(queues.values())


def run_random_traffic(seed: int) -> int:
    """Clients arriving with bursts, finishing and cancelling at random, SCOREs among them, with
    a batch and a budget small enough to preempt and chunk: every preemption (victims, their
    order, the queues after) and every step's chunks must be the reference's. Returns how many
    sequences were preempted."""
    rng = random.Random(seed)
    scheduler = Scheduler(max_batch=rng.choice([3, 4, 8, 16]), token_budget=rng.choice([5, 12, 64, 8192]))
    clients = [client() for _ in range(rng.randint(2, 5))]
    preempted = 0
    for round_ in range(150):
        sink = rng.choice(clients[: 1 + round_ // 15])  # a client more every 15 rounds
        for _ in range(rng.choice([0, 0, 1, 3, 9])):
            kind = Kind.SCORE if rng.random() < 0.15 else Kind.GENERATE
            scheduler.add(request(sink, f"{seed}-{round_}", rng.randint(1, 20), kind))
        if rng.random() < 0.1:
            live = list(scheduler.waiting) + scheduler.running
            scheduler.cancel(rng.sample(live, min(len(live), rng.randint(1, 3))))
        reference = Reference(scheduler)
        victims, queues = reference.preempt()
        old_ids = [seq.seq_id for seq in victims]  # a preempted sequence gets a new id
        assert scheduler.preempt() == old_ids, (seed, round_)
        assert (queues_of(scheduler), scheduler.running) == (queues, reference.running), (seed, round_)
        expected = reference.schedule()
        chunks = [(c.seq, c.tokens, c.completes_prefill) for c in step(scheduler)]
        assert chunks == expected, (seed, round_)
        assert (queues_of(scheduler), scheduler.running) == (list(reference.queues.values()),
                                                             reference.running), (seed, round_)
        scheduler.finish([s for s in scheduler.running if s.kind is Kind.SCORE or rng.random() < 0.1])
        preempted += len(victims)
    return preempted


def test_random_traffic_follows_the_brute_force_reference() -> None:
    preempted = [run_random_traffic(seed) for seed in range(16)]
    assert sum(preempted) >= 30 and sum(p > 0 for p in preempted) >= 12, preempted  # it was exercised


def test_waiting_generations_join_beside_a_chained_step_only_where_they_fit() -> None:
    """``admit`` (beside a chained step) takes waiting generations while the batch has room,
    without preempting, and stops at a SCORE request; ``fits_waiting`` says whether every waiting
    one fits so (else an ordinary step admits them, preempting for fairness)."""
    scheduler, running = started(3, "r0", "r1")
    late = request(client(), "late", prompt_length=5)
    scheduler.add(late)
    assert scheduler.fits_waiting()
    [chunk] = scheduler.admit()
    assert chunk.seq is late and chunk.tokens == [1, 2, 3, 4, 5] and chunk.completes_prefill
    assert late.status is Status.RUNNING and scheduler.running == [*running, late]
    full, score = request(client(), "full"), request(client(), "score", kind=Kind.SCORE)
    scheduler.add(full)
    assert not scheduler.fits_waiting() and scheduler.admit() == []  # the batch is full: nobody preempted
    assert all(seq.status is Status.RUNNING for seq in [*running, late]) and full.status is Status.WAITING
    roomy, _ = started(4, "r0")
    roomy.add(score)
    assert not roomy.fits_waiting() and roomy.admit() == [] and score.status is Status.WAITING
