"""Checks of the slot-cache attention kernels (lmql_hf.kernels.slot_attention), run on the CPU by Triton's
interpreter: decode rows and packed prompt chunks against a float64 softmax written here, and HF
backends prefilling and decoding through them against transformers' own generate.

Triton decides at import whether it interprets, so these run in a process of their own, started
by test_row_kernel.py with TRITON_INTERPRET=1 (pytest does not collect this file by itself).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
import torch
from test_hf_prefill import greedy_in_steps, greedy_with_transformers, prompts
from torch.nn import functional

from lmql_hf.bundled import bundled_path
from lmql_hf.kernels.tiles import tile_table, tokens_per_tile

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_row_kernel.py"


@pytest.fixture(scope="module")
def kernel() -> ModuleType:
    from lmql_hf.kernels import slot_attention

    return slot_attention


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: list[int], scale: float) -> torch.Tensor:
    """(rows, 1, heads, dim) from q (rows, heads, 1, dim) and k, v (rows, kv_heads, len, dim)."""
    rows, heads, _, dim = q.shape
    group = heads // k.shape[1]
    out = torch.empty((rows, 1, heads, dim), dtype=torch.float64)
    for r in range(rows):
        for h in range(heads):
            keys = k[r, h // group, : positions[r] + 1].double()
            values = v[r, h // group, : positions[r] + 1].double()
            weights = torch.softmax(keys @ q[r, h, 0].double() * scale, dim=0)
            out[r, 0, h] = weights @ values
    return out


@pytest.mark.parametrize(("rows", "heads", "kv_heads", "dim", "length"), [
    (3, 4, 4, 32, 64),  # one head per key/value head, one split
    (2, 8, 2, 64, 1024),  # grouped queries; few rows, long keys: positions split across programs
    (5, 6, 3, 80, 200),  # a head size that is no power of two; a length no block multiple
    (1, 2, 1, 16, 700),  # one row, split, a last split shorter than the others
])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_each_row_attends_to_its_own_positions(kernel: ModuleType, rows: int, heads: int, kv_heads: int,
                                               dim: int, length: int, dtype: str) -> None:
    torch.manual_seed(rows * heads * dim + length)
    kind = getattr(torch, dtype)
    # queries as the models make them: heads transposed out of (rows, 1, heads, dim)
    q = torch.randn(rows, 1, heads, dim).to(kind).transpose(1, 2)
    # keys and values as views of a larger slot cache: more slots, longer buffers
    cache = torch.randn(2, rows + 2, kv_heads, length + 37, dim).to(kind)
    k, v = cache[0, 1 : rows + 1, :, :length], cache[1, 1 : rows + 1, :, :length]
    positions = [length - 1, 0, *[int(p) for p in torch.randint(0, length, (rows,))]][:rows]
    # a column of a (rows, 2) tensor: positions with a stride, as the graphs' inputs have them
    at = torch.tensor([[p, -1] for p in positions])[:, 0]
    scale = 0.7 / dim ** 0.5
    out = kernel.decode_attention(q, k, v, at, scale)
    want = reference(q, k, v, positions, scale)
    assert out.shape == (rows, 1, heads, dim) and out.dtype == kind
    error = float((out.double() - want).abs().max())
    assert error < (1e-5 if dtype == "float32" else 3e-3), (positions, error)


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: list[int],
                   scale: float) -> torch.Tensor:
    """(rows, 1, heads, dim) by torch's SDPA in float64: each row's keys masked past its position,
    the key/value heads repeated for their query heads, whatever lies past a row's keys zeroed."""
    rows, heads, _, _ = q.shape
    seen = torch.arange(k.shape[2])[None, :] <= torch.tensor(positions)[:, None]
    k, v = (torch.where(seen[:, None, :, None], t.double(), 0.0) for t in (k, v))
    k, v = (t.repeat_interleave(heads // k.shape[1], dim=1) for t in (k, v))
    mask = seen[:, None, None, :]  # (rows, 1, 1, keys), True where a row attends
    out = functional.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


# the programs are rows x key/value heads x splits, each interpreted: two key/value heads where the
# models have eight, with their query heads per key/value head, head sizes and the same splits
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [
    (4, 4, 32),  # one query head per key/value head (GPT-2)
    (4, 2, 128),  # Qwen3-0.6B's grouping (16 on 8) and head size
    (8, 2, 64),  # Llama 3.2 1B's (32 on 8)
])
# not bfloat16: Triton 3.9's interpreter multiplies bfloat16 blocks wrongly in tl.dot (errors of
# 1e10 on a plain 16 x 16 product); scripts/gpu_check.py runs the kernels in bfloat16 on a GPU
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rows_read_nothing_past_their_own_length(kernel: ModuleType, heads: int, kv_heads: int, dim: int,
                                                 dtype: str) -> None:
    """Rows of mixed lengths (one of a single position, some at a length bucket's edge) in one
    call, given keys up to a length bucket (512) and up to the whole context (1024, as with
    --any_length_graphs): the same results, those of SDPA over each row's own keys, though every
    position past a row's own holds NaN (read and weighted 0, it would make the row NaN)."""
    torch.manual_seed(heads + dim)
    kind = getattr(torch, dtype)
    positions = [0, 511, 510, 63, 64, 300]  # lengths 1, 512 (the bucket's edge), ...
    rows, context = len(positions), 1024
    q = torch.randn(rows, 1, heads, dim).to(kind).transpose(1, 2)
    cache = torch.randn(2, rows + 1, kv_heads, context, dim).to(kind)
    for row, position in enumerate(positions):
        cache[:, row, :, position + 1 :] = float("nan")
    scale = dim ** -0.5
    want = sdpa_reference(q, cache[0, :rows], cache[1, :rows], positions, scale)
    at = torch.tensor(positions)
    # the context's length also with even splits, as --any_length_graphs runs it
    for length, even in ((512, False), (context, False), (context, True)):
        assert kernel.split_of(rows, kv_heads, length, even)[0] > 1  # partial sums combined too
        keys, values = cache[0, :rows, :, :length], cache[1, :rows, :, :length]
        out = kernel.decode_attention(q, keys, values, at, scale, even)
        assert out.shape == (rows, 1, heads, dim) and out.dtype == kind
        error = float((out.double() - want).abs().max())
        assert error < (1e-5 if dtype == "float32" else 3e-3), (length, even, error)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (8, 2, 64)])
@pytest.mark.parametrize("length", [64, 1024])  # one split; several (a row's new key in its last)
def test_a_decode_row_writes_its_new_key_and_value_as_it_attends(kernel: ModuleType, heads: int, kv_heads: int,
                                                                 dim: int, length: int) -> None:
    """``new``: each row's key and value at its position come beside the cache, which does not hold
    them yet (NaN there): the rows attend as SDPA does over the cache holding them, and the kernel
    leaves them in it, at each row's own slot, a padding row's in the scratch slot it names; no
    other position of the cache changes."""
    torch.manual_seed(heads + dim + length)
    positions = [0, length - 1, 5, length // 2, 0]  # the last row pads: it writes the scratch slot
    rows, first, scratch = len(positions), 2, 9
    slots = torch.tensor([[first + r] for r in range(rows - 1)] + [[scratch]])
    q = torch.randn(rows, 1, heads, dim).transpose(1, 2)
    new_k, new_v = (torch.randn(rows, 1, kv_heads, dim).transpose(1, 2) for _ in range(2))
    cache = torch.randn(2, 10, kv_heads, length, dim)
    want_cache = cache.clone()
    for r, position in enumerate(positions):
        cache[:, int(slots[r, 0]), :, position] = float("nan")  # not written yet
        want_cache[0, int(slots[r, 0]), :, position] = new_k[r, :, 0]
        want_cache[1, int(slots[r, 0]), :, position] = new_v[r, :, 0]
    view = slice(first, first + rows)
    scale = dim ** -0.5
    want = sdpa_reference(q[:-1], want_cache[0, view][:-1], want_cache[1, view][:-1], positions[:-1], scale)
    out = kernel.decode_attention(q, cache[0, view], cache[1, view], torch.tensor(positions), scale,
                                  new=(new_k, new_v, slots, first))
    error = float((out[:-1].double() - want).abs().max())
    assert error < 1e-5, error
    assert torch.equal(cache, want_cache)


def test_splits_only_where_rows_and_heads_leave_the_gpu_idle(kernel: ModuleType) -> None:
    assert kernel.split_of(1, 8, 2048)[0] > 1
    assert kernel.split_of(256, 8, 2048) == (1, 2048)
    assert kernel.split_of(4, 4, 100)[0] == 1  # too short to be worth splitting
    # even: spans of 256 positions, or a 16th of a longer context, however many rows
    assert kernel.split_of(256, 8, 2048, even=True) == kernel.split_of(1, 8, 2048, even=True) == (8, 256)
    assert kernel.split_of(1, 8, 32768, even=True) == (16, 2048)
    assert kernel.split_of(4, 4, 100, even=True) == (1, 256)
    splits, span = kernel.split_of(2, 2, 1024)
    assert splits * span >= 1024 and (splits - 1) * span < 1024 and span % kernel.BLOCK_N == 0


def test_tiles_cover_each_chunk_and_pad_with_empty_ones() -> None:
    table = tile_table([(0, 5, 7, 0), (5, 130, 2, 40)], tokens=64, width=6)
    assert table.tolist() == [[0, 5, 69, 133, 0, 0],  # first token in the packed row
                              [5, 64, 64, 2, 0, 0],  # tokens
                              [7, 2, 2, 2, 0, 0],  # slot
                              [0, 40, 104, 168, 0, 0]]  # position of the first token
    assert [tokens_per_tile(h, kv) for h, kv in ((16, 16), (32, 8), (12, 4), (4, 2))] == [64, 16, 16, 32]


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(4, 4, 32), (8, 2, 64), (6, 2, 48)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_prompt_chunks_attend_causally_to_their_own_slots(kernel: ModuleType, heads: int, kv_heads: int,
                                                         dim: int, dtype: str) -> None:
    """Chunks packed side by side: fresh prompts and continuations of cached ones, each reading
    its slot from position 0 to its own token; padding tokens at the end belong to no tile."""
    torch.manual_seed(heads * dim)
    kind = getattr(torch, dtype)
    chunks = [(3, 0, 70), (0, 100, 9), (5, 17, 1), (1, 0, 130)]  # (slot, start, tokens)
    total, padded = sum(n for *_, n in chunks), 256
    q = torch.randn(1, padded, heads, dim).to(kind).transpose(1, 2)  # (1, heads, T, dim), strided
    cache = torch.randn(2, 6, kv_heads, 300, dim).to(kind)
    segments, offset = [], 0
    for slot, start, n in chunks:
        segments.append((offset, n, slot, start))
        offset += n
    tiles = torch.from_numpy(tile_table(segments, tokens_per_tile(heads, kv_heads), width=16))
    scale = dim ** -0.5
    out = kernel.prompt_attention(q, cache[0], cache[1], tiles, scale)
    assert out.shape == (1, padded, heads, dim) and out.dtype == kind
    for offset, n, slot, start in segments:
        rows = q[0, :, offset : offset + n].transpose(0, 1)[:, :, None]  # (n, heads, 1, dim)
        each = [cache[i, slot : slot + 1].expand(n, -1, -1, -1) for i in (0, 1)]
        want = reference(rows, each[0], each[1], list(range(start, start + n)), scale)
        error = float((out[0, offset : offset + n].double() - want[:, 0]).abs().max())
        assert error < (1e-5 if dtype == "float32" else 3e-3), (slot, start, n, error)
    assert total < padded


@pytest.fixture(scope="module")
def qwen3_gqa(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small Qwen3-shaped model: grouped-query attention (4 query heads on 2 key/value heads)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                         eos_token_id=0, bos_token_id=0)
    path = tmp_path_factory.mktemp("qwen3-gqa")
    Qwen3ForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """lmql-tiny's architecture (Llama, one key/value head per query head, heads of 32, a tied
    head, 512 positions) at a third of its width, half its layers and an eighth of its vocabulary:
    the interpreter runs a program per two output rows of every one-row product and per tile and
    head of every attention, so the fused checks cost minutes on lmql-tiny and seconds on this."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("small-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


FUSED = {"fuse_kernels": True}
# without fused modules the CPU's float32 decode steps run lean_decode's own attention, not the kernel
THROUGH_MODULES = {"fuse_kernels": False, "lean_decode": False}
ANY_LENGTH = {"any_length_graphs": True}  # decode steps given the whole context's keys


@pytest.mark.parametrize(("which", "options"), [
    ("lmql-tiny", {"fuse_kernels": False}), ("qwen3", {"fuse_kernels": False}), ("gpt2", {"fuse_kernels": False}),
    ("llama", FUSED), ("gpt2", FUSED),
    ("llama", {**FUSED, **ANY_LENGTH}), ("qwen3", {**THROUGH_MODULES, **ANY_LENGTH}),
], ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value)
def test_backends_decode_through_the_kernel_as_transformers_does(which: str, options: dict[str, bool],
                                                                 qwen3_gqa: str, small_gpt2: str,
                                                                 small_llama: str) -> None:
    """Streams of different lengths in one decode step, each reading only its own keys; with
    fused modules too (as on CUDA: one-row decoder layers, kernel cache writes); with
    ``any_length_graphs`` every decode step at the context's length (grouped queries: Qwen3)."""
    from transformers import AutoModelForCausalLM

    from lmql_hf.backend import HFBackend

    paths = {"lmql-tiny": str(bundled_path("lmql-tiny")), "llama": small_llama, "qwen3": qwen3_gqa, "gpt2": small_gpt2}
    path = paths[which]
    # interpreted, a warm-up takes minutes; a prompt pass has a tile per row of the batch (empty
    # ones too, as a graph's replay would): 4 rows, not the CPU's default of 64
    backend = HFBackend(path, warm_up=False, max_batch=4, **options)
    assert bool(backend.fused_modules) == options["fuse_kernels"]
    assert backend.slot_kernels and backend.prompts is not None  # prompt passes by tiles too
    if "any_length_graphs" in options:  # and the decode steps go through the kernel, not lean_decode's
        assert backend.lengths == [backend.max_context] and backend.lean is None
    model: Any = AutoModelForCausalLM.from_pretrained(path).eval()
    batch = prompts(3, [300, 5, 40], backend.vocab_size, seed=3)
    # chunks of 128: the long prompt continues from its own cache (starts 128, 256) beside decode rows
    got = greedy_in_steps(backend, batch, arrivals=[0, 1, 1], chunk=128, new_tokens=6)
    assert got == [greedy_with_transformers(model, p, 6) for p in batch]


def test_mixed_traffic_through_the_kernels_gives_transformers_results() -> None:
    """tests/test_engine_reference.py's mixed traffic (chunked prompts, SCOREs, preemption,
    cached prefixes) on a backend whose passes go through the slot kernels, the cache kernels
    (writes, slot moves) and the fused one-row layers."""
    from test_engine_reference import Traffic
    from transformers import AutoModelForCausalLM

    from lmql_core.engine.engine import Engine
    from lmql_hf.backend import HFBackend

    # lmql-tiny, not the small Llama: with every slot move one position short this check fails
    # on lmql-tiny and passed on the small one (with its vocabulary at 2048, the same traffic, too)
    path = str(bundled_path("lmql-tiny"))
    traffic = Traffic(AutoModelForCausalLM.from_pretrained(path).eval(), 11, shared=True)
    backend = HFBackend(path, fuse_kernels=True, max_batch=3, warm_up=False)
    assert backend.slot_kernels and backend.prompts is not None and backend.cache.move_slots is not None
    engine = Engine(backend, token_budget=64, max_batch=3)
    try:
        for round_ in ([traffic.client("first", 4), traffic.client("second", 2)], [traffic.client("again", 4)]):
            for _, requests in round_:  # the second round finds the first one's prompts cached
                for seq in requests:
                    engine.submit(seq)
            for client, _ in round_:
                traffic.check(client, timeout=600)  # interpreted kernels
        assert backend.table.reused_tokens > 0
    finally:
        engine.stop()
