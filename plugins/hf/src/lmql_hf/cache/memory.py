"""GPU memory sized together: the KV cache's slots, the CUDA graphs' pool and the largest pass.

On a GPU the cache takes what the other users of memory leave: the biggest prompt pass a step
can run (``prefill_tokens`` tokens, every one of them a scored position at worst), the engine's
sampling over the largest batch, the decode graphs (each keeps its float32 logits), and the
copies that move slots. Where the
user gave no ``max_batch``, the batch is as large as the cache then holds, up to ``AUTO_MAX_BATCH``.
The estimates are upper bounds of what those passes allocate (activations in the model's dtype,
logits in float32 where the engine reads them); plain arithmetic, so it is checked on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmql_core.plugin import SCORE_ROWS
from lmql_hf.cache.slot_cache import SWAPS_AT_ONCE

AUTO_MAX_BATCH = 256  # with no --max_batch on a GPU: at most this many, as memory allows
CPU_MAX_BATCH = 64  # with no --max_batch elsewhere
AUTO_MEMORY_FRACTION = 0.95  # of the free memory, when --cache_memory_fraction is not given (the
# reserve for passes and graphs is counted apart, generously: see ModelShape)
MARGIN = 1 << 30  # for the allocator's rounding and fragmentation, and kernels' workspaces


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def of(cls, config: Any, vocab: int, dtype_bytes: int) -> ModelShape:
        heads = config.num_attention_heads
        hidden = config.hidden_size
        return cls(layers=config.num_hidden_layers, hidden=hidden,
                   intermediate=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                   or 4 * hidden,
                   heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or hidden // heads, vocab=vocab,
                   dtype_bytes=dtype_bytes)

    def slot_bytes(self, max_len: int) -> int:
        """Keys and values of one sequence of ``max_len`` positions, every layer."""
        return 2 * self.layers * self.kv_heads * max_len * self.head_dim * self.dtype_bytes

    def pass_bytes(self, tokens: int, max_len: int) -> int:
        """A packed pass of ``tokens`` tokens, each one's logits kept (a pass of SCOREs): the
        activations of one layer at a time (hidden states, q/k/v with their rotated copies, the
        MLP's inner states, keys and values repeated for grouped-query attention), the output
        head's rows in the model's dtype and the engine's copy of them, and its float32 work on
        ``SCORE_ROWS`` of them at a time (cast, log-softmax, and one more)."""
        b = self.dtype_bytes
        per_token = b * (8 * self.hidden + 4 * (self.heads + 2 * self.kv_heads) * self.head_dim
                         + 3 * self.intermediate)
        attention = 4 * self.heads * self.head_dim * b * (tokens + max_len)
        logits = tokens * self.vocab * 2 * b + min(tokens, SCORE_ROWS) * self.vocab * 12
        return tokens * per_token + attention + logits

    def sampling_bytes(self, rows: int) -> int:
        """The engine's sampling of ``rows`` rows: float32 logits, log-probs, and two more."""
        return rows * self.vocab * 4 * 4

    def graphs_bytes(self, batches: list[int], lengths: int) -> int:
        """The decode graphs' pool: each graph's float32 logits stay allocated, and the largest
        batch's step (one token a row) runs in it."""
        largest = max(batches)
        return sum(batches) * lengths * self.vocab * 4 + self.pass_bytes(largest, 0)


@dataclass(frozen=True)
class MemoryPlan:
    max_batch: int
    slots: int  # the cache's: running sequences, cached prefixes, the scratch slot
    slot_bytes: int
    reserved_bytes: int  # for everything else (see ``ModelShape``)
    source: str  # of max_batch: "memory" (chosen here), "given" (--max_batch), "default" (64)

    def describe(self) -> str:
        gib = 1 << 30
        how = {"memory": "chosen from GPU memory; --max_batch sets it"}.get(self.source, self.source)
        return (f"KV cache: {self.slots} slots ({self.slots * self.slot_bytes / gib:.1f} GiB); "
                f"max_batch {self.max_batch} ({how}); {self.reserved_bytes / gib:.1f} GiB kept for passes "
                "and graphs")


def plan(shape: ModelShape, free_bytes: int, max_len: int, prefill_tokens: int, graph_lengths: int,
         batch_buckets: list[int], max_batch: int | None, fraction: float | None) -> MemoryPlan:
    """Slots and batch for a GPU with ``free_bytes`` free (weights loaded): ``fraction`` of it
    (``AUTO_MEMORY_FRACTION`` when None) less what passes and graphs need, in slots of ``max_len``
    positions. A given ``max_batch`` stays (fewer only where not even its slots fit); with none,
    the most that fit, up to ``AUTO_MAX_BATCH``. Running sequences come first; as many cached
    prefixes as running sequences where room is left."""
    budget = int(free_bytes * (AUTO_MEMORY_FRACTION if fraction is None else fraction))
    slot = shape.slot_bytes(max_len)

    # a pass feeds at most prefill_tokens tokens, or one sequence's chunk (up to max_len) alone;
    # exchanging slots gathers 2 x SWAPS_AT_ONCE slots of keys (or values) at a time
    fixed = shape.pass_bytes(max(prefill_tokens, max_len), max_len) + SWAPS_AT_ONCE * slot + MARGIN

    def reserve(batch: int) -> int:
        batches = [b for b in batch_buckets if b < batch] + [batch]
        return fixed + shape.sampling_bytes(batch) + shape.graphs_bytes(batches, graph_lengths)

    def slots_beside(batch: int) -> int:
        return (budget - reserve(batch)) // slot

    low, high = 1, max_batch or AUTO_MAX_BATCH  # the most running sequences whose slots fit
    if slots_beside(low) < 2:
        raise MemoryError(f"no room for a KV cache of {max_len} positions beside the model's passes; "
                          "pass a smaller --max_seq_len or --prefill_tokens")
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if slots_beside(middle) > middle else (low, middle - 1)
    slots = min(2 * low + 1, slots_beside(low))
    return MemoryPlan(low, slots, slot, reserve(low), "given" if max_batch else "memory")


def plan_elsewhere(shape: ModelShape, budget: int, max_len: int, max_batch: int | None) -> MemoryPlan:
    """Off a single GPU (the CPU, layers spread over GPUs): slots for ``max_batch`` running
    sequences (``CPU_MAX_BATCH`` when None) and as many cached prefixes, within ``budget`` bytes."""
    wanted = CPU_MAX_BATCH if max_batch is None else int(max_batch)
    slot = shape.slot_bytes(max_len)
    slots = min(2 * wanted + 1, budget // slot)
    if slots < 2:
        raise MemoryError(f"no room for a KV cache of {max_len} positions; "
                          "pass a smaller --max_seq_len")
    source = "default" if max_batch is None else "given"
    return MemoryPlan(min(wanted, slots - 1), slots, slot, 0, source)
