"""GPU memory sized together (lmql_hf.cache.memory): the KV cache's slots, the batch chosen from memory
where the user gave none, and what MODEL_INFO reports. The plan is arithmetic, checked here on
the CPU against the issue's figures (a Qwen3-0.6B-shaped model on an 80 GB H100)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lmql  # noqa: E402
from lmql_hf.cache import memory  # noqa: E402
from lmql_hf.cuda.graphs import BATCH_BUCKETS, length_buckets  # noqa: E402

GIB = 1 << 30
QWEN3 = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128)


def qwen3_shape() -> memory.ModelShape:
    return memory.ModelShape.of(transformers.Qwen3Config(**QWEN3), 151936, 2)  # bfloat16


def plan_on(free: int, max_batch: int | None = None, shape: memory.ModelShape | None = None,
            max_len: int = 2048) -> memory.MemoryPlan:
    return memory.plan(shape or qwen3_shape(), free, max_len, 8192, len(length_buckets(max_len)),
                       list(BATCH_BUCKETS), max_batch, None)


def test_a_slot_holds_every_layers_keys_and_values() -> None:
    # the figure: 28 layers x 8 kv heads x 128 x 2048 positions x (keys, values) x 2 bytes
    assert qwen3_shape().slot_bytes(2048) == 28 * 8 * 128 * 2048 * 2 * 2 == 224 * (1 << 20)
    gpt2 = memory.ModelShape.of(transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16), 50257, 2)
    assert (gpt2.intermediate, gpt2.head_dim, gpt2.slot_bytes(1024)) == (4096, 64, 24 * 16 * 64 * 1024 * 4)


def test_an_h100_serves_256_qwen3_streams_when_no_batch_is_given() -> None:
    free = 75 * GIB  # 80 GB less the weights and the CUDA context, with room to spare
    plan = plan_on(free)
    assert (plan.max_batch, plan.source) == (256, "memory")
    assert plan.slots > 256  # the running ones, the scratch slot, cached prefixes where room is left
    assert plan.slots * plan.slot_bytes + plan.reserved_bytes <= 0.95 * free
    # the reserve covers a pass of 8192 scored tokens: their logits alone are 8192 x 151936 x 2 bytes
    assert plan.reserved_bytes > 8192 * 151936 * 2
    assert "max_batch 256 (chosen from GPU memory; --max_batch sets it)" in plan.describe()


def test_a_smaller_gpu_gets_the_batch_that_fits_and_a_given_batch_stays() -> None:
    plan = plan_on(24 * GIB)
    assert 16 < plan.max_batch < 256 and plan.slots >= plan.max_batch + 1
    assert plan.slots * plan.slot_bytes + plan.reserved_bytes <= 0.95 * 24 * GIB
    given = plan_on(40 * GIB, max_batch=32)
    assert (given.max_batch, given.slots, given.source) == (32, 65, "given")  # and as many prefixes
    beyond = plan_on(24 * GIB, max_batch=200)  # more than fit: as many as do
    assert beyond.max_batch == plan.max_batch and beyond.source == "given"


def test_no_room_for_a_cache_is_an_error_that_says_what_to_change() -> None:
    with pytest.raises(MemoryError, match="--max_seq_len or --prefill_tokens"):
        plan_on(6 * GIB)


def test_off_a_gpu_the_batch_is_64_unless_given_and_model_info_says_where_it_came_from() -> None:
    llm = lmql.model("local:lmql-tiny")
    info = llm.model_info_sync()["model_info"]  # the first use loads the model (as LMQL's local:)
    loaded = llm.client.host.models["lmql-tiny"]  # type: ignore[attr-defined]
    assert loaded.backend.max_batch == loaded.engine.scheduler.max_batch == 64
    assert (info["max_batch"], info["max_batch_from"]) == (64, "default")
    assert info["kv_cache"]["bytes"] == info["kv_cache"]["slots"] * memory.ModelShape.of(
        loaded.backend.model.config, 2048, 4).slot_bytes(info["kv_cache"]["max_len"])
    given = lmql.model("local:lmql-tiny", max_batch=5, max_seq_len=128).model_info_sync()["model_info"]
    assert (given["max_batch"], given["max_batch_from"], given["kv_cache"]["slots"]) == (5, "given", 11)


def test_off_one_gpu_the_slots_are_the_running_sequences_and_as_many_prefixes_within_the_budget() -> None:
    shape = qwen3_shape()
    slot = 28 * 8 * 128 * 1024 * 2 * 2  # every layer's keys and values of 1024 positions
    roomy = memory.plan_elsewhere(shape, 1000 * slot, 1024, None)
    assert (roomy.max_batch, roomy.slots, roomy.slot_bytes, roomy.source) == (64, 129, slot, "default")
    tight = memory.plan_elsewhere(shape, 10 * slot + slot // 2, 1024, 32)  # 10 slots fit, one is scratch
    assert (tight.max_batch, tight.slots, tight.reserved_bytes, tight.source) == (9, 10, 0, "given")
    with pytest.raises(MemoryError, match="no room for a KV cache of 1024 positions; pass a smaller --max_seq_len"):
        memory.plan_elsewhere(shape, 2 * slot - 1, 1024, None)


def test_one_decode_graph_length_leaves_five_lengths_of_logits_to_the_cache() -> None:
    """--any_length_graphs: each batch bucket's graph keeps its float32 logits (batch x 151936 x 4
    bytes) once, not once per length bucket (six at 2048 positions): more streams fit."""
    free = 24 * GIB
    bucketed = plan_on(free)
    one = memory.plan(qwen3_shape(), free, 2048, 8192, len(length_buckets(2048, any_length=True)),
                      list(BATCH_BUCKETS), None, None)
    assert one.max_batch > bucketed.max_batch
    same_batch = memory.plan(qwen3_shape(), free, 2048, 8192, 1, list(BATCH_BUCKETS), bucketed.max_batch, None)
    batches = [b for b in BATCH_BUCKETS if b < bucketed.max_batch] + [bucketed.max_batch]
    assert bucketed.reserved_bytes - same_batch.reserved_bytes == 5 * sum(batches) * 151936 * 4
