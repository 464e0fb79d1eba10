"""``Scheduler.take_over``: a template's next hole goes on in its last one's place in the batch
(its cache passed on by the backend, ``backend.TakesOver``). The scheduler alone, as in
tests/test_scheduler.py: the batch's order, the fair share's counts, and every later transition
of the sequence that took over."""

from __future__ import annotations

from lmql_core.engine.scheduler import Scheduler
from lmql_core.engine.sequence import Status
from tests.test_scheduler import client, request, step


def test_the_next_sequence_runs_in_the_ended_ones_place() -> None:
    scheduler = Scheduler(max_batch=3)
    mine, other = client(), client()
    first, beside = request(mine, "a"), request(other, "b")
    for seq in (first, beside):
        scheduler.add(seq)
    step(scheduler)
    following = request(mine, "a")
    following.prompt = first.tokens + [9, 9]  # the hole's value and the text after it
    following.num_fed = first.num_fed  # (what the backend kept)
    scheduler.take_over(first, following)
    assert scheduler.running == [following, beside] and scheduler.taken_over == 1
    assert (first.status, following.status) == (Status.FINISHED, Status.RUNNING)
    assert scheduler.finish([first]) == []  # it has ended already
    chunks = {c.seq.stream_id: c.tokens for c in step(scheduler)}
    assert chunks["a"] == first.tokens[first.num_fed:] + [9, 9]  # only what it has not fed
    # the client still runs one sequence: a third client's request fits without preemption
    scheduler.add(request(client(), "c"))
    assert scheduler.preempt() == [] and len(step(scheduler)) == 3


def test_the_sequence_that_took_over_is_preempted_and_cancelled_as_any() -> None:
    scheduler = Scheduler(max_batch=2)
    mine = client()
    first, second = request(mine, "a"), request(mine, "b")
    for seq in (first, second):
        scheduler.add(seq)
    step(scheduler)
    following = request(mine, "a")
    scheduler.take_over(second, following)  # the newest of its client's running sequences
    scheduler.add(request(client(), "c"))  # another client, below its share of one
    held = following.seq_id  # its cache (passed on from the sequence before it)
    assert scheduler.preempt() == [held] and following.status is Status.WAITING
    assert following.num_fed == 0 and scheduler.running == [first]
    step(scheduler)
    assert scheduler.cancel([following]) == [following] and following.status is Status.CANCELLED
