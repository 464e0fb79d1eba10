"""The HF backend's slot table (``lmql_hf.cache.slots.SlotTable``) over a real, tiny ``SlotCache`` on
the CPU, without a model: which slot each sequence gets, cached prefixes taken over, running
slots kept compact on release, and tokens appended from the device (pending) then confirmed.

Every "computed" token is written into the cache as its own value (keys and values, every
layer), so the cache can be read back: after every move the table describes, each slot's cache
must still hold exactly the tokens the table says it holds. (The last test loads lmql-tiny: the
backend's order of a chained step's rows is its slots'.)"""

from __future__ import annotations

import os
import random

import pytest

torch = pytest.importorskip("torch")

from lmql_hf.cache.slot_cache import SlotCache  # noqa: E402
from lmql_hf.cache.slots import PENDING, SlotTable  # noqa: E402

SLOTS = 5  # four for sequences, the last is scratch
MAX_LEN = 16


def make_table(reuse_prefixes: bool = True, slots: int = SLOTS) -> SlotTable:
    cache = SlotCache(layers=2, slots=slots, kv_heads=1, max_len=MAX_LEN, head_dim=2,
                      dtype=torch.float32, devices=[torch.device("cpu")] * 2)
    return SlotTable(cache, reuse_prefixes=reuse_prefixes)


def write(table: SlotTable, slot: int, start: int, tokens: list[int]) -> None:
    """What a forward pass does to the cache: positions start.. of ``slot`` now hold ``tokens``."""
    values = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None]
    for group in table.cache.groups:
        group[:, slot, :, start : start + len(tokens)] = values


def held(table: SlotTable, slot: int, length: int) -> list[int]:
    return [int(v) for v in table.cache.groups[0][0, slot, 0, :length, 0]]


def feed(table: SlotTable, seq_id: int, prompt: list[int], reuse: bool = True) -> tuple[int, int]:
    """Admit a prompt and compute what the cache lacks of it, as the backend's forward does."""
    slot, kept = table.admit(seq_id, prompt, reuse=reuse)
    write(table, slot, kept, prompt[kept:])
    table.append(seq_id, prompt[kept:])
    return slot, kept


def assert_cache_follows_table(table: SlotTable) -> None:
    for index, slot in enumerate(table.slots):
        known = [t for t in slot.tokens if t != PENDING]
        if len(known) == len(slot.tokens):
            assert held(table, index, len(slot.tokens)) == slot.tokens, f"slot {index}"


def test_sequences_take_the_lowest_free_slots_and_the_scratch_slot_is_never_given() -> None:
    table = make_table()
    assert (table.capacity, table.scratch) == (SLOTS - 1, SLOTS - 1)
    assert [feed(table, seq_id, [seq_id, 9])[0] for seq_id in (10, 11, 12, 13)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="all 4 cache slots are in use"):
        table.admit(14, [1, 2])
    assert_cache_follows_table(table)


def test_a_prompt_extending_a_finished_one_takes_its_slot_and_computes_only_the_rest() -> None:
    table = make_table()
    feed(table, 1, [5, 6, 7, 8])
    table.release([1])
    assert table.slots[0].tokens == [5, 6, 7, 8] and table.active == 0  # kept as a cached prefix
    slot, kept = feed(table, 2, [5, 6, 7, 9, 10])
    assert (slot, kept, table.reused_tokens) == (0, 3, 3)
    assert table.slots[0].tokens == [5, 6, 7, 9, 10]
    assert_cache_follows_table(table)


def test_an_equal_prompt_still_computes_its_last_token_and_scoring_reuses_nothing() -> None:
    table = make_table()
    feed(table, 1, [5, 6, 7])
    table.release([1])
    assert feed(table, 2, [5, 6, 7])[1] == 2  # the last token's logits are the answer
    table.release([2])
    assert feed(table, 3, [5, 6, 7, 8], reuse=False)[1] == 0
    assert_cache_follows_table(table)


def test_without_prefix_reuse_a_released_slot_is_forgotten() -> None:
    table = make_table(reuse_prefixes=False)
    feed(table, 1, [5, 6, 7])
    table.release([1])
    assert table.slots[0].tokens == []
    assert feed(table, 2, [5, 6, 7, 8])[1] == 0


def test_a_new_prompt_moves_a_cached_prefix_aside_instead_of_overwriting_it() -> None:
    table = make_table()
    feed(table, 1, [5, 6, 7])
    table.release([1])
    feed(table, 2, [40, 41])  # no common prefix: slot 0's prefix goes to an empty slot
    assert table.slot_of[2] == 0 and [5, 6, 7] in [s.tokens for s in table.slots[1:]]
    assert_cache_follows_table(table)
    table.release([2])
    assert feed(table, 3, [5, 6, 7, 8])[1] == 3  # still reusable
    assert_cache_follows_table(table)


def test_release_moves_running_sequences_down_into_the_holes() -> None:
    table = make_table()
    for seq_id in (1, 2, 3, 4):
        feed(table, seq_id, [seq_id * 10, seq_id * 10 + 1])
    table.release([1, 3])
    assert sorted(table.slot_of.values()) == [0, 1]  # compact: one contiguous range
    assert table.slot_of[2] == 1 and table.slot_of[4] in (0, 1)
    assert table.slots[table.slot_of[4]].tokens == [40, 41]
    assert_cache_follows_table(table)
    before = dict(table.slot_of)
    feed(table, 5, [50])
    table.release([5])  # the highest slot ended: nothing moves
    assert table.slot_of == before
    assert_cache_follows_table(table)


def test_many_sequences_ending_at_once_move_down_in_several_exchanges() -> None:
    table = make_table(slots=21)
    for seq_id in range(20):
        feed(table, seq_id, [seq_id, seq_id + 100, seq_id + 200][: 1 + seq_id % 3])
    table.release(list(range(0, 20, 2)))  # every other one: 5 holes below 10, 5 movers above
    assert sorted(table.slot_of.values()) == list(range(10))
    assert_cache_follows_table(table)


def test_pending_tokens_match_no_prompt_until_confirmed() -> None:
    table = make_table()
    feed(table, 1, [5, 6])
    feed(table, 2, [7, 8])
    table.append_pending([1, 2])
    assert table.slots[0].tokens == [5, 6, PENDING] and table.length(1) == 3
    table.confirm([1, 2], [30, 31])
    assert table.slots[0].tokens == [5, 6, 30] and table.slots[1].tokens == [7, 8, 31]
    assert table.pending == {}
    write(table, 0, 2, [30])
    write(table, 1, 2, [31])
    table.release([1])
    assert feed(table, 3, [5, 6, 30, 4])[1] == 3  # the confirmed token is reused as a prefix
    assert_cache_follows_table(table)


def test_a_confirmation_for_a_released_sequence_is_dropped() -> None:
    table = make_table()
    feed(table, 1, [5, 6])
    table.append_pending([1])
    table.release([1])
    assert table.pending == {}
    table.confirm([1], [30])  # arrives after the release: nothing to write, nothing breaks
    assert table.slots[0].tokens == [5, 6, PENDING]
    assert feed(table, 2, [5, 6, 30, 9])[1] == 2  # the token never confirmed matches nothing


def test_a_next_sequence_takes_over_a_running_slot_kept_up_to_where_the_tokens_differ() -> None:
    """A template's next hole goes on in its last one's slot (``backend.TakesOver``): no slot
    moves, the cache kept up to the first token the new prompt does not share (a token still
    pending shares none), never the prompt's last; a late confirmation for the old id is dropped."""
    table = make_table()
    feed(table, 1, [5, 6])
    feed(table, 2, [7, 8, 9])
    table.append_pending([2])  # a chained step fed its last token (an EOS, say), not read yet
    assert table.take_over(2, 3, [7, 8, 9, 4, 4]) == 3  # the pending token is not kept
    assert table.slot_of == {1: 0, 3: 1} and table.pending == {} and table.length(3) == 3
    table.confirm([2], [30])  # the old id's token arrives late: dropped
    assert table.slots[1].tokens == [7, 8, 9]
    write(table, 1, 3, [4, 4])
    table.append(3, [4, 4])
    assert_cache_follows_table(table)
    assert table.take_over(3, 4, [7, 8, 2, 2]) == 2  # the value was written otherwise: cut there
    assert table.take_over(4, 5, [7, 8]) == 1  # an equal prompt still computes its last token
    assert table.take_over(4, 6, [7, 8]) is None and table.slot_of == {1: 0, 5: 1}  # (4 has gone on)
    assert table.reused_tokens == 3 + 2 + 1
    table.release([5])
    assert feed(table, 7, [7, 9])[1] == 1  # its tokens are a cached prefix once it ends
    assert_cache_follows_table(table)


def walked_prefix(table: SlotTable, prompt: list[int]) -> int:
    """The longest prefix of ``prompt`` a cached slot holds, by walking every slot above the
    running ones (at most all but the prompt's last token: its logits are the answer)."""
    cached = [slot.tokens for slot in table.slots[table.active :]]
    longest = max((len(os.path.commonprefix([tokens, prompt])) for tokens in cached), default=0)
    return min(longest, len(prompt) - 1)


def test_many_admissions_and_releases_reuse_the_longest_cached_prefix() -> None:
    """Random prompts over a small alphabet (so they share prefixes), random releases and a
    table small enough to evict: every admission reuses what a walk over the slots finds, and
    the cache holds what the table says."""
    rng = random.Random(7)
    table = make_table(slots=9)
    running: list[int] = []
    for seq_id in range(300):
        if len(running) == table.capacity or (running and rng.random() < 0.4):
            ending = rng.sample(running, rng.randint(1, len(running)))
            table.release(ending)
            running = [s for s in running if s not in ending]
        if rng.random() < 0.02:
            table.forget_prefixes()
        prompt = [rng.choice([3, 4, 5]) for _ in range(rng.randint(1, MAX_LEN - 1))]
        expected = walked_prefix(table, prompt)
        assert feed(table, seq_id, prompt)[1] == expected, seq_id
        running.append(seq_id)
        assert_cache_follows_table(table)


def test_the_backends_rows_order_is_the_slots_a_chained_step_runs_in() -> None:
    """``HFBackend.rows_order`` (``ChainedSteps``' optional key): after a release moved a running
    sequence into a lower slot, the rows in that order are the slots' order, and a chained step
    fed them so gives each sequence the logits it gets fed in any other order."""
    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend
    from lmql_hf.bundled import bundled_path

    backend = HFBackend(str(bundled_path("lmql-tiny")), warm_up=False, chain_steps=True)
    prompts = {1: [1, 5, 6], 2: [1, 7, 8, 9], 3: [1, 10]}
    backend.forward([StepInput(seq_id, prompt) for seq_id, prompt in prompts.items()])
    backend.release(1)  # sequence 3 moves down into slot 0
    assert backend.rows_order([2, 3]) == [1, 0] and backend.rows_order([2, 4]) is None
    ordered = backend.forward_sampled([3, 2], torch.tensor([11, 12]))
    assert ordered is not None
    backend.table.confirm([3, 2], [11, 12])
    for seq_id in (2, 3):
        backend.table.slots[backend.table.slot_of[seq_id]].tokens.pop()  # fed again below
    other = backend.forward_sampled([2, 3], torch.tensor([12, 11]))
    assert other is not None
    torch.testing.assert_close(ordered.last_logits, other.last_logits[[1, 0]])
