"""Packed prompt passes replayed from CUDA graphs: one graph per bucket of tokens.

An eager pass of the HF module launches every kernel from Python: for a 24-layer model that is
~15 ms of host time whatever the tokens, so SCORE batches and prompts joining running streams
waited for the host, not the GPU. Here a pass of up to ``bucket`` tokens is one replay: the
tokens, their positions and slots, and the table of attention tiles (``tile_table``) are
copied into the graph's static inputs; padding tokens write to the scratch slot and belong to no
tile. The graph ends at the model's last hidden states; the output head runs afterwards on the
positions whose logits are read only. Every bucket is captured before "Ready" (``prompt_plan``);
one whose capture ran out of memory runs eagerly until its ``--capture_at_use``-th use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lmql_core.plugin import TorchOps
from lmql_hf.cache.packed import PackedRows
from lmql_hf.cuda.graphs import capture, prompt_plan
from lmql_hf.kernels.tiles import TILE_FIELDS, tile_table

_OPS = TorchOps()


def token_buckets(most: int) -> list[int]:
    """Powers of two up to 512, then 1.5x between them (768, 1536, ...): a pass pads at most a
    third of its tokens once passes are long enough for the padding to cost."""
    buckets, n = [64, 128, 256], 512
    while n < most:
        buckets += [n, n * 3 // 2]
        n *= 2
    return sorted({b for b in buckets if b < most} | {most})


class PromptGraph:
    def __init__(self, tokens: int, tiles: int, device: torch.device) -> None:
        self.tokens, self.tiles = tokens, tiles
        self.inputs = torch.zeros(3 * tokens + TILE_FIELDS * tiles, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph() if device.type == "cuda" else None
        self.hidden: torch.Tensor | None = None

    def views(self, inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(1, T) ids, positions and slots; (TILE_FIELDS, tiles) tiles: of the graph's static
        inputs, or of ``inputs`` laid out as they are."""
        inputs = self.inputs if inputs is None else inputs
        n = self.tokens
        ids, positions, slots = (inputs[i * n : (i + 1) * n].view(1, n) for i in range(3))
        return ids, positions, slots, inputs[3 * n :].view(TILE_FIELDS, self.tiles)


class PromptGraphs:
    """``forward(ids, positions, slots, tiles)`` returns the last hidden states, (1, T, hidden).
    Without ``capture`` (no CUDA: Triton's interpreter in tests) every pass runs it eagerly, with
    the same padded inputs a graph would get."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, most_tokens: int,
                 most_rows: int, tokens_per_tile: int, scratch_slot: int, capture: bool = True,
                 capture_at_use: int = 2) -> None:
        self.forward = forward
        self.capture = capture
        self.device = device
        self.per_tile = tokens_per_tile
        self.most_rows = most_rows
        self.scratch = scratch_slot
        self.graphs = {n: PromptGraph(n, self._width(n), device) for n in token_buckets(most_tokens)}
        self.plan = prompt_plan(list(self.graphs), capture_at_use)
        self.pool: Any = None

    def _width(self, tokens: int) -> int:
        """Tiles a pass of ``tokens`` tokens can need: whole tiles, plus a partial one per row."""
        return -(-tokens // self.per_tile) + min(tokens, self.most_rows)

    def capture_first(self) -> None:
        """Capture every bucket (before "Ready")."""
        for tokens in self.plan.first if self.capture else ():
            self._capture(self.graphs[tokens])

    def capture_next(self) -> bool:
        """Capture one bucket not captured yet, the smallest first; False when none is left."""
        tokens = self.plan.next_idle() if self.capture else None
        if tokens is None:
            return False
        self._capture(self.graphs[tokens])
        return True

    def fits(self, batch: PackedRows) -> bool:
        return len(batch.ids) <= max(self.graphs) and len(batch.segments) <= self.most_rows

    def run(self, batch: PackedRows) -> torch.Tensor:
        """The last hidden states of the batch's tokens, (T, hidden), of a replay (or, before its
        bucket is captured, of an eager pass with the inputs a replay would get)."""
        count = len(batch.ids)
        graph = self.graphs[next(n for n in self.graphs if n >= count)]
        tiles = tile_table([(s.offset, s.length, s.slot, s.start) for s in batch.segments],
                                          self.per_tile, graph.tiles)
        host = np.zeros(graph.inputs.shape[0], dtype=np.int64)
        n = graph.tokens
        host[:count], host[n : n + count] = batch.ids, batch.positions
        host[2 * n : 2 * n + count] = batch.slots
        host[2 * n + count : 3 * n] = self.scratch  # padding tokens write where nothing reads
        host[3 * n :] = tiles.reshape(-1)
        inputs = _OPS.to_device(torch.from_numpy(host), self.device)
        how = self.plan.use(n) if self.capture else "eager"
        if how == "eager" or (how == "capture" and not self._capture(graph)):
            return self.forward(*graph.views(inputs))[0, :count]
        graph.inputs.copy_(inputs)
        assert graph.graph is not None
        graph.graph.replay()
        assert graph.hidden is not None
        return graph.hidden[0, :count]

    def _capture(self, graph: PromptGraph) -> bool:
        """Whether ``graph`` was captured (False: out of memory; its bucket then runs eagerly)."""
        ids, positions, slots, tiles = graph.views()
        warm = not self.plan.ran_eagerly(graph.tokens)
        slots.fill_(self.scratch)  # a warm-up run writes to the scratch slot; no tile reads
        assert graph.graph is not None
        try:
            graph.hidden = capture(graph.graph, lambda: self.forward(ids, positions, slots, tiles),
                                   self.device, self.pool, warm)
        except torch.cuda.OutOfMemoryError:
            self.plan.failed.add(graph.tokens)
            graph.graph = torch.cuda.CUDAGraph()
            return False
        self.pool = graph.graph.pool()
        self.plan.captured.add(graph.tokens)
        return True
