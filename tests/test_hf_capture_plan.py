"""When the HF backend captures its CUDA graphs (issue 32's start-up): before "Ready" only the
first requests' few, any other bucket at its second use (its first runs eagerly) or while the
engine idles (tests/test_engine_idle.py). The captures themselves need a GPU
(scripts/gpu_check.py); the plan is checked here."""

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


def test_before_ready_one_stream_up_to_256_positions_is_captured_of_72_graphs() -> None:
    plan = plan_of()
    assert len(plan.order) == 12 * 6 == len(set(plan.order))  # 12 batch buckets x 64..2048
    assert plan.first == [(1, 64), (1, 128), (1, 256)]
    assert plan_of(everything=True).first == plan.order  # --capture_all True: all 72 before Ready


def test_idle_captures_come_few_streams_and_short_lengths_first() -> None:
    order = plan_of().order
    assert order[:6] == [(1, 64), (2, 64), (1, 128), (4, 64), (2, 128), (1, 256)]
    # by batch x length: every length bucket has its one-stream graph among the first 21, every
    # batch bucket its 64-position graph within the first 40 (of 72)
    assert {n for b, n in order[:21] if b == 1} == set(length_buckets(2048))
    assert {b for b, n in order[:40] if n == 64} == set(BATCH_BUCKETS)
    assert order[-1] == (256, 2048)


def test_a_bucket_runs_eagerly_once_then_is_captured_then_replays() -> None:
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
    assert at_first.use(512) == "capture"
    assert not at_first.ran_eagerly(512)  # so the capture runs a warm-up pass first
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
    plan = plan_of(max_len=128, max_batch=2)
    assert plan.order == [(1, 64), (2, 64), (1, 128), (2, 128)]
    plan.captured.update(plan.first)
    plan.use((2, 64))
    plan.use((2, 64))
    plan.captured.add((2, 64))  # a request's second use captured it
    assert plan.next_idle() == (2, 128)


def test_prompt_buckets_captured_before_ready_are_those_up_to_256_tokens() -> None:
    buckets = token_buckets(8192)
    plan = prompt_plan(buckets)
    assert plan.first == [64, 128, 256] and len(buckets) == 12
    assert prompt_plan(buckets, everything=True).first == buckets
    assert plan.next_idle() == 64  # nothing captured yet: the smallest first


def test_capture_all_is_an_option_serve_model_lists() -> None:
    option = OPTIONS["capture_all"]
    assert option.default is True  # until the deferred captures have run on a GPU
    assert "before Ready" in option.help


def test_with_any_length_graphs_one_decode_graph_per_batch_serves_every_length() -> None:
    """--any_length_graphs (the slot-attention kernel reads each row up to its own position, so
    a step's length only sizes the kernel's grid): 12 graphs instead of 72, the first at the context."""
    assert length_buckets(2048, any_length=True) == [2048]
    plan = decode_plan(batch_buckets(256), length_buckets(2048, any_length=True))
    assert plan.order == [(b, 2048) for b in BATCH_BUCKETS]
    assert plan.first == [(1, 2048)]
    option = OPTIONS["any_length_graphs"]
    assert option.default is False  # until a GPU has measured it (benchmarks/decode_lengths_bench.py)


def test_capture_at_use_below_one_is_refused_before_the_model_loads() -> None:
    from lmql_core.errors import LMQLError
    from lmql_hf.backend import HFBackend
    from lmql_hf.bundled import bundled_path

    with pytest.raises(LMQLError, match="capture_at_use counts a shape's uses from 1, not 0"):
        HFBackend(bundled_path("lmql-tiny"), warm_up=False, capture_at_use=0)
