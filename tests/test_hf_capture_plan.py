"""When the HF backend captures its CUDA graphs (issue 32's start-up): before "Ready" every
prompt pass's graph, one stream's decode graphs up to 256 positions and each batch's decode graph
at the longest length (its cover, which any shorter length of that batch replays meanwhile); the
other buckets while the engine idles (tests/test_engine_idle.py); a bucket with no cover (its
capture ran out of memory) eagerly and then at its ``capture_at_use``-th use. The captures
themselves need a GPU (scripts/gpu_check.py, tests/test_hf_cover_graphs.py); the plan is checked here."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from lmql_hf.cuda.graphs import (  # noqa: E402
    BATCH_BUCKETS,
    CapturePlan,
    batch_buckets,
    decode_plan,
    length_buckets,
    prompt_plan,
)
from lmql_hf.cuda.prompt_graphs import token_buckets  # noqa: E402
from lmql_hf.options import OPTIONS  # noqa: E402


def plan_of(max_len: int = 2048, max_batch: int = 256, everything: bool = False) -> CapturePlan[Any]:
    return decode_plan(batch_buckets(max_batch), length_buckets(max_len), everything)


def test_before_ready_one_stream_up_to_256_positions_and_each_batch_cover_are_captured_of_72() -> None:
    plan = plan_of()
    assert len(plan.order) == 12 * 6 == len(set(plan.order))  # 12 batch buckets x 64..2048
    assert plan.first == [(1, 64), (1, 128), (1, 256)] + [(b, 2048) for b in BATCH_BUCKETS]
    assert plan_of(everything=True).first == plan.order  # --capture_all True: all 72 before Ready


def test_a_bucket_with_its_cover_captured_replays_the_cover_and_waits_for_idle_time() -> None:
    plan = plan_of()
    key = (8, 512)
    assert [plan.use(key, covered=True) for _ in range(5)] == ["cover"] * 5
    assert not plan.ran_eagerly(key)  # so its idle capture runs a warm-up pass first
    assert key not in plan.uses  # the uses that count toward a capture at use are uncovered ones
    plan.captured.update(plan.first)
    assert plan.next_idle() == (2, 64)  # idle captures skip the covers captured before Ready
    plan.captured.add(key)
    assert plan.use(key, covered=True) == "replay"  # its own graph once captured


def test_idle_captures_come_few_streams_and_short_lengths_first() -> None:
    order = plan_of().order
    assert order[:6] == [(1, 64), (2, 64), (1, 128), (4, 64), (2, 128), (1, 256)]
    # by batch x length: every length bucket has its one-stream graph among the first 21, every
    # batch bucket its 64-position graph within the first 40 (of 72)
    assert {n for b, n in order[:21] if b == 1} == set(length_buckets(2048))
    assert {b for b, n in order[:40] if n == 64} == set(BATCH_BUCKETS)
    assert order[-1] == (256, 2048)


def test_a_bucket_without_a_cover_runs_eagerly_once_then_is_captured_then_replays() -> None:
    plan = plan_of()
    key = (8, 512)
    assert not plan.ran_eagerly(key)
    assert plan.use(key) == "eager"
    assert plan.ran_eagerly(key)  # so its capture needs no warm-up run
    assert plan.use(key) == "capture"
    plan.captured.add(key)  # what DecodeGraphs does once the capture succeeded
    assert [plan.use(key) for _ in range(3)] == ["replay"] * 3


def test_capture_at_use_runs_a_bucket_eagerly_until_that_use() -> None:
    plan = decode_plan(batch_buckets(256), length_buckets(2048), capture_at_use=4)
    key = (64, 128)
    assert [plan.use(key) for _ in range(4)] == ["eager", "eager", "eager", "capture"]
    plan.captured.add(key)
    assert plan.use(key) == "replay"
    at_first = prompt_plan(token_buckets(8192), capture_at_use=1)
    at_first.failed.add(512)  # out of memory before Ready: eager from then on
    assert at_first.use(512) == "eager"
    at_first = decode_plan(batch_buckets(256), length_buckets(2048), capture_at_use=1)
    assert at_first.use((8, 512)) == "capture"
    assert not at_first.ran_eagerly((8, 512))  # so the capture runs a warm-up pass first
    with pytest.raises(ValueError, match="from 1"):
        CapturePlan([64], [64], capture_at_use=0)
    assert OPTIONS["capture_at_use"].default == 2


def test_a_bucket_whose_capture_failed_runs_eagerly_and_is_not_offered_again() -> None:
    plan = CapturePlan([64, 128, 256], [64])
    plan.use(128)
    plan.failed.add(128)  # out of memory during its capture
    assert [plan.use(128) for _ in range(3)] == ["eager"] * 3
    plan.captured.add(64)
    assert plan.next_idle() == 256
    plan.captured.add(256)
    assert plan.next_idle() is None


def test_idle_captures_skip_what_requests_captured() -> None:
    plan = plan_of(max_len=256, max_batch=2)
    assert plan.order == [(1, 64), (2, 64), (1, 128), (2, 128), (1, 256), (2, 256)]
    plan.captured.update(plan.first)
    plan.failed.add((2, 256))  # its cover's capture ran out of memory: (2, 64) is eager, then captured
    assert [plan.use((2, 64)), plan.use((2, 64))] == ["eager", "capture"]
    plan.captured.add((2, 64))  # a request's second use captured it
    assert plan.next_idle() == (2, 128)


def test_every_prompt_bucket_is_captured_before_ready() -> None:
    buckets = token_buckets(8192)
    plan = prompt_plan(buckets)
    assert plan.first == buckets and len(buckets) == 12
    plan.captured.update(plan.first)
    assert plan.next_idle() is None


def test_capture_all_is_an_option_serve_model_lists() -> None:
    option = OPTIONS["capture_all"]
    assert option.default is False  # the covers keep first runs at a new batch size fast (GPU-measured)
    assert "before Ready" in option.help


def test_with_any_length_graphs_one_decode_graph_per_batch_serves_every_length() -> None:
    """--any_length_graphs (the slot-attention kernel reads each row up to its own position, so
    a step's length only sizes the kernel's grid): 12 graphs instead of 72, the first at the context."""
    assert length_buckets(2048, any_length=True) == [2048]
    plan = decode_plan(batch_buckets(256), length_buckets(2048, any_length=True))
    assert plan.order == [(b, 2048) for b in BATCH_BUCKETS]
    assert plan.first == plan.order  # each graph is its batch's cover
    option = OPTIONS["any_length_graphs"]
    assert option.default is False  # until a GPU has measured it (benchmarks/decode_lengths_bench.py)


def test_capture_at_use_below_one_is_refused_before_the_model_loads() -> None:
    from lmql_core.errors import LMQLError
    from lmql_hf.backend import HFBackend
    from lmql_hf.bundled import bundled_path

    with pytest.raises(LMQLError, match="capture_at_use counts a shape's uses from 1, not 0"):
        HFBackend(bundled_path("lmql-tiny"), warm_up=False, capture_at_use=0)
