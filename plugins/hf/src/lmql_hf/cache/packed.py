"""Prompt chunks packed into one row: no padding, attention per sequence against its own slot.

A step's prompt chunks run as one (1, T) pass: every token of every chunk side by side, so the
projections, MLPs and the output head see only real tokens, however the chunks' lengths differ.
Only attention needs to know where a chunk ends: the model runs with the attention function
registered here (``ATTENTION``), which treats a pass as packed when the keys it gets are the
slot cache's whole buffers (``SlotCache`` returns those for a packed pass) and then attends each
chunk's queries to its own slot, from position 0 to its last token, causally. Chunks of equal
length and start in neighbouring slots (a burst of new prompts) attend in one batched call.
Where Triton runs, the kernels of kernels/slot_attention.py take over: a decode step (one query per row)
inside ``decode_pass`` reads each row's keys only up to its own position, and a packed pass inside
``tiled_pass`` (cuda/prompt_graphs.py, replayed from CUDA graphs) attends by a table of tiles in a
device tensor. Any other pass goes to transformers' SDPA function unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from lmql_hf import kernels

ATTENTION = "lmql_packed"


@dataclass(frozen=True)
class Segment:
    """One sequence's chunk in the packed row."""

    offset: int  # index of its first token in the row
    length: int  # tokens computed now
    slot: int  # its cache slot
    start: int  # position of its first token (tokens before it are in the slot already)


@dataclass(frozen=True)
class Group:
    """Segments attended in one call: equal length and start, neighbouring offsets and slots."""

    offset: int
    length: int
    slot: int
    start: int
    count: int


_current = threading.local()  # the pass in progress on this thread: its groups, tiles or decode positions


def slot_kernels(device: torch.device) -> ModuleType | None:
    """The slot-cache attention kernels, where they run: CUDA with Triton (or its interpreter).
    Asked once, at load: ``decode_pass`` and ``tiled_pass`` are entered only where they run."""
    if not kernels.runs_on(device):
        return None
    try:
        from lmql_hf.kernels import slot_attention
    except ImportError:
        return None
    return slot_attention


@contextmanager
def _in_pass(name: str, value: Any) -> Iterator[None]:
    """``value`` is what this thread's pass in progress knows as ``name`` (for packed_attention)."""
    setattr(_current, name, value)
    try:
        yield
    finally:
        setattr(_current, name, None)


@contextmanager
def decode_pass(positions: torch.Tensor, even: bool = False) -> Iterator[None]:
    """Decode attention reads row i's keys up to ``positions[i]`` (1-D, on the device); with
    ``even`` its positions split evenly whatever the rows (``slot_attention.split_of``)."""
    with _in_pass("decode_positions", positions), _in_pass("even_splits", even), _in_pass("new_keys", None):
        yield


def attention_writes(attend: Any) -> bool:
    """Whether ``attend``, called now, writes the pass's new keys and values into the slot cache
    itself (``leave_to_attention``): the slot kernel in a decode pass."""
    return attend is packed_attention and getattr(_current, "decode_positions", None) is not None


def leave_to_attention(key_states: torch.Tensor, value_states: torch.Tensor, slots: torch.Tensor,
                       first_slot: int) -> None:
    """The new keys and values for the next ``packed_attention`` of this decode pass to write, row
    i's into slot ``slots[i, 0]``; its keys start at slot ``first_slot``."""
    _current.new_keys = (key_states, value_states, slots, first_slot)


def tiled_pass(tiles: torch.Tensor) -> AbstractContextManager[None]:
    """A packed pass whose attention follows ``tiles`` (kernels.tiles.tile_table, on the device)."""
    return _in_pass("tiles", tiles)


@contextmanager
def packed_pass(segments: list[Segment]) -> Iterator[None]:
    with _in_pass("groups", group(segments)), _without_cudnn():
        yield


@contextmanager
def _without_cudnn() -> Iterator[None]:
    """Chunks come in ever new shapes (count, length, start), and cuDNN's attention builds a plan
    for each new shape on its first call (tens to hundreds of ms): a request would wait for that
    after "Ready". Flash and memory-efficient attention need no such plans."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN attention either
        yield
        return
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def group(segments: list[Segment]) -> list[Group]:
    groups: list[Group] = []
    for s in segments:
        last = groups[-1] if groups else None
        if (last is not None and (last.length, last.start) == (s.length, s.start)
                and s.offset == last.offset + last.count * last.length and s.slot == last.slot + last.count):
            groups[-1] = Group(last.offset, last.length, last.slot, last.start, last.count + 1)
        else:
            groups.append(Group(s.offset, s.length, s.slot, s.start, 1))
    return groups


def causal_mask(positions: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """For an ordinary pass: (rows, 1, tokens, length), each token seeing the positions up to its own."""
    columns = torch.arange(length, device=positions.device)
    visible = columns[None, None, :] <= positions[:, :, None]
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def no_mask(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """For passes whose attention ignores the mask (packed chunks, the slot kernels): a 4D mask
    is taken as given, so transformers builds none either."""
    return torch.zeros((1, 1, 1, 1), dtype=dtype, device=device)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (batch, heads, tokens, dim); returns
    (batch, tokens, heads, dim). A packed pass has one row of queries and the whole cache as keys."""
    ordinary = query.shape[0] == key.shape[0]  # an ordinary pass: rows and their slots
    positions = getattr(_current, "decode_positions", None)
    if ordinary and positions is not None and query.shape[2] == 1:
        from lmql_hf.kernels import slot_attention

        even = bool(getattr(_current, "even_splits", False))
        new, _current.new_keys = getattr(_current, "new_keys", None), None
        return slot_attention.decode_attention(query, key, value, positions, scaling, even, new), None
    # new keys left to a decode attention (``leave_to_attention``) would be lost by any other
    if getattr(_current, "new_keys", None) is not None:
        raise RuntimeError("new keys were left to a decode attention that did not run")
    if ordinary:
        if query.shape[2] == 1 and query.shape[1] > key.shape[1]:
            return _one_query_grouped(query, key, value, attention_mask, scaling)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    tiles = getattr(_current, "tiles", None)
    if tiles is not None:
        from lmql_hf.kernels import slot_attention

        return slot_attention.prompt_attention(query, key, value, tiles, scaling), None
    groups: list[Group] = _current.groups
    if len(groups) == 1:  # one call covers the row (one prompt, or a burst of equal ones): no copy
        return _group_attention(query, key, value, groups[0], scaling)[None], None
    out = query.new_empty((1, query.shape[2], query.shape[1], query.shape[3]))
    for g in groups:
        out[0, g.offset : g.offset + g.count * g.length] = _group_attention(query, key, value, g, scaling)
    return out, None


def _group_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: Group,
                     scaling: float | None) -> torch.Tensor:
    """One group's attention, shaped as its span of the packed row: (count * length, heads, dim)."""
    heads, dim = query.shape[1], query.shape[3]
    n, end = g.length, g.start + g.length
    # (count, heads, n, dim): a view of the packed queries
    q = query[0, :, g.offset : g.offset + g.count * n].view(heads, g.count, n, dim).transpose(0, 1)
    k, v = key[g.slot : g.slot + g.count, :, :end], value[g.slot : g.slot + g.count, :, :end]
    attended = causal_attention(q, k, v, heads // key.shape[1], scaling, g.start)
    return attended.transpose(1, 2).reshape(g.count * n, heads, dim)


def _one_query_grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: torch.Tensor | None, scale: float | None) -> tuple[torch.Tensor, None]:
    """A decode step of grouped-query attention: each key/value head's query heads attend as one
    head's rows, so the cache is read once rather than copied once per query head (some
    transformers releases repeat it). ``mask``: (rows, 1, 1, keys), shared by all heads."""
    rows, heads, _, dim = query.shape
    grouped = query.reshape(rows, key.shape[1], heads // key.shape[1], dim)
    out = functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scale)
    return out.reshape(rows, 1, heads, dim), None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeat: int, scale: float | None,
            start: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of n queries at positions start.. to keys 0..start+n-1; ``mask``: that
    of ``lower_right_mask(n, start)``, where the caller holds it (a pass's layers share it)."""
    if repeat > 1:  # grouped-query attention
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    if start == 0:
        return functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if mask is None:  # torch's bias: on a GPU, kernels that read it without a mask in memory
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(q.shape[2], k.shape[2])
        return functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def lower_right_mask(queries: int, start: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive mask (0 or -inf) of ``queries`` queries at positions start.. against keys
    0..start+queries-1, each reading up to its own position: what SDPA makes of torch's
    ``causal_lower_right`` bias on the CPU, without that bias's Python dispatch on each call."""
    allowed = torch.ones(queries, start + queries, dtype=torch.bool, device=device).tril_(start)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


def install(model: Any) -> bool:
    """Route ``model``'s attention through ``packed_attention``; False where it cannot be
    (another attention than SDPA was chosen, softcapping or sliding windows, old transformers)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or _needs_more_than_causal(config):
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, packed_attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        model.set_attn_implementation(ATTENTION)
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
    return getattr(config, "_attn_implementation", None) == ATTENTION


def _needs_more_than_causal(config: Any) -> bool:
    text = getattr(config, "get_text_config", lambda: config)()
    if getattr(text, "attn_logit_softcapping", None) is not None:
        return True
    if getattr(text, "use_sliding_window", False):
        return True
    layer_types = getattr(text, "layer_types", None) or []
    return any(kind != "full_attention" for kind in layer_types)


@dataclass
class PackedRows:
    """The inputs of one packed pass, built on the host (numpy: one upload per array)."""

    ids: np.ndarray  # (T,)
    positions: np.ndarray  # (T,)
    slots: np.ndarray  # (T,)
    segments: list[Segment]  # in packing order
    keep: np.ndarray  # indices into the row whose logits are computed
    kept_of: list[tuple[int, int]]  # per input row, in the caller's order: its span of ``keep``


def pack(rows: list[tuple[list[int], int, int, int]]) -> PackedRows:
    """``rows``: (tokens, slot, start, logits_from) each; a row needs logits for its tokens from
    ``logits_from`` on (its last token only: ``len(tokens) - 1``). Rows are packed by (start,
    length, slot), so a burst of new equal-length prompts attends in one call."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][2], len(rows[i][0]), rows[i][1]))
    total = sum(len(tokens) for tokens, *_ in rows)
    ids, positions, slots = (np.empty(total, dtype=np.int64) for _ in range(3))
    segments, keep_parts, spans = [], [], [(0, 0)] * len(rows)
    offset = kept = 0
    for i in order:
        tokens, slot, start, logits_from = rows[i]
        n = len(tokens)
        ids[offset : offset + n] = tokens
        positions[offset : offset + n] = np.arange(start, start + n)
        slots[offset : offset + n] = slot
        segments.append(Segment(offset, n, slot, start))
        keep_parts.append(np.arange(offset + logits_from, offset + n))
        spans[i] = (kept, kept + n - logits_from)
        kept += n - logits_from
        offset += n
    return PackedRows(ids, positions, slots, segments, np.concatenate(keep_parts), spans)
