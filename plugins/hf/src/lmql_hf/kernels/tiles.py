"""The tiles of a packed prompt pass, as the slot-attention kernel (``slot_attention``) reads
them: each a run of one chunk's tokens, in a table that lives in a device tensor, so that a pass
captured in a CUDA graph (``cuda/prompt_graphs``) replays with any chunks. Free of Triton: the
backend imports it (through ``cuda/replays``) on every device.
"""

from __future__ import annotations

import numpy as np

PROMPT_TILE = 64  # the attention kernel's query rows (tokens x grouped heads) per program
TILE_FIELDS = 4  # a tile: first token (index in the packed row), tokens, slot, position of the first


def tokens_per_tile(heads: int, kv_heads: int) -> int:
    """Tokens of a tile: the kernel's rows are tokens x query heads per key/value head (a power of two)."""
    return max(1, PROMPT_TILE // (1 << (heads // kv_heads - 1).bit_length()))


def tile_table(segments: list[tuple[int, int, int, int]], tokens: int,
               width: int | None = None) -> np.ndarray:
    """The tiles of prompt chunks given as (first token in the packed row, tokens, slot, position
    of the first token): (TILE_FIELDS, tiles) int64, tiles of at most ``tokens`` tokens; padded
    with empty tiles up to ``width``."""
    parts = []
    for offset, length, slot, start in segments:
        firsts = np.arange(0, length, tokens)
        counts = np.minimum(tokens, length - firsts)
        parts.append(np.stack([offset + firsts, counts, np.full_like(firsts, slot), start + firsts]))
    table = np.concatenate(parts, axis=1) if parts else np.zeros((TILE_FIELDS, 0), dtype=np.int64)
    if width is not None:
        assert table.shape[1] <= width
        table = np.pad(table, ((0, 0), (0, width - table.shape[1])))
    return table.astype(np.int64)
