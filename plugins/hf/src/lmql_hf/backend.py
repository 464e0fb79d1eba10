"""The HF backend: a ``transformers`` causal LM stepping many sequences over a slot KV cache.

Every sequence lives in a cache slot (``SlotCache``) and finished prompts are reused as prefixes
(``SlotTable``). A step's single decode tokens run together, replayed from CUDA graphs on a GPU;
its prompt chunks run packed into one row without padding (``packed``), and the output head
sees only the positions whose logits are read: each chunk's last token, and for a SCORE its
tokens from ``StepInput.logits_from`` on (``StepOutput.all_logits`` then holds just those rows).
So a long prompt never materializes (tokens x vocabulary) logits. Models whose attention cannot
be packed (not SDPA, softcapping, sliding windows) run steps padded to the widest chunk.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from lmql_core.plugin import Backend, LMQLError, StepInput, StepOutput, TorchOps, find_tokenizer_json
from lmql_hf import description, kernels, warm_up
from lmql_hf.cache import memory, packed
from lmql_hf.cache.slot_cache import SlotCache
from lmql_hf.cache.slots import SlotTable
from lmql_hf.cpu import lean_decode
from lmql_hf.cpu.threads import HostThreads, weights_per_token
from lmql_hf.cuda import fused, kernel_ops, replays
from lmql_hf.cuda.graphs import BATCH_BUCKETS, length_buckets, no_captures
from lmql_hf.loading import chat, hub, loader_keys, weights
from lmql_hf.loading.tokenizer import cached_tokenizer_json
from lmql_hf.options import ENGINE_OPTIONS

console = Console(stderr=True)


@dataclass
class Row:
    item: StepInput
    slot: int
    start: int  # position of the first token computed now
    tokens: list[int]  # tokens computed now (a reused prefix is skipped)


class HFBackend(Backend):
    ops: TorchOps
    max_context: int  # always known here: the model's positions, capped by max_seq_len
    max_batch: int
    stepped_at: float  # when the last step began (``replays.CapturesLeft`` waits for a pause)

    def __init__(self, model: str, *, cuda: bool = False, dtype: str | None = None, **kwargs: Any) -> None:
        with no_captures():  # another model of this process captures nothing meanwhile
            self._load(model, cuda, dtype, kwargs)

    def _load(self, model: str, cuda: bool, dtype: str | None, kwargs: dict[str, Any]) -> None:
        self.options = {k: kwargs.pop(k, v) for k, v in ENGINE_OPTIONS.items()}
        if (at_use := int(self.options["capture_at_use"])) < 1:
            raise LMQLError(f"capture_at_use counts a shape's uses from 1, not {at_use}")
        self.fused_modules = 0
        self.name = model
        self.kwargs = weights.loader_kwargs(cuda, dtype, kwargs)
        self.path, offline = hub.locate(model, self.kwargs.get("revision"))
        weights.read_ahead(self.path)
        loader_keys.check(self.path, kwargs, dict(self.kwargs, **offline))
        loaded = weights.load_weights(self.path, dict(offline, **self.kwargs), bool(self.options["progress"]))
        self.model = loaded.eval()
        self.model.requires_grad_(False)  # inference only: no autograd, also while capturing graphs
        self.device = self.model.get_input_embeddings().weight.device
        if _auto(self.options["fuse_kernels"], self.device.type == "cuda"):
            self.fused_modules = fused.fuse(self.model)
        config = self.model.config
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_token_id = _first(self.model.generation_config.eos_token_id or config.eos_token_id)
        self.bos_token_id = _first(self.model.generation_config.bos_token_id or config.bos_token_id)
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_context = min(context or self.options["max_seq_len"], self.options["max_seq_len"])
        self.ops = kernel_ops.ops_for(self.device)
        # transformers 5.x renamed `past_key_values` to `cache`
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.packs = packed.install(self.model)
        self.slot_kernels = (self.packs and bool(self.options["slot_attention"])
                             and packed.slot_kernels(self.device) is not None)
        self._keeps_logits = "logits_to_keep" in params  # the head runs on chosen positions only
        # the kept positions' index: where the last hidden states are, or (layers spread over
        # devices, which accelerate moves between) on the host, which indexing any device accepts
        self.devices = weights.devices_of(self.model)
        spread = len(self.devices) > 1
        self._keep_device = torch.device("cpu") if spread else self.device
        self.prefill_tokens = int(self.options["prefill_tokens"])
        # with the slot kernels a decode step's length only sizes the attention kernel's grid
        self.any_length = self.slot_kernels and bool(self.options["any_length_graphs"])
        self.lengths = length_buckets(self.max_context, self.any_length)
        self.shape = memory.ModelShape.of(config, self.vocab_size, self.model.dtype.itemsize)
        self.memory = self._plan_memory()
        if self.device.type == "cuda":
            console.print(self.memory.describe())
        self.cache = self._allocate_cache(self.memory.slots)
        if self.fused_modules and not spread and kernels.runs_on(self.device):
            self.cache.use_kernels()  # writes and slot moves in one kernel each
        self.threads = HostThreads(self.options["cpu_threads"],
                                   all(p.device.type == "cuda" for p in self.model.parameters()),
                                   weights_per_token(self.model))
        # decode rows as direct torch operations (the CPU's Llama and GPT-2, their own modules)
        packing = self.options["packed_linears"]
        if packing not in (True, False, "auto"):
            raise LMQLError(f"packed_linears takes True, False or auto, not {packing!r}")
        lean = (self.options["lean_decode"] and not self.fused_modules
                and lean_decode.LeanDecoder.of(self.model, self.cache, self.threads,
                                               None if packing == "auto" else packing))
        self.lean = lean or None
        self.table = SlotTable(self.cache, bool(self.options["reuse_prefixes"]))
        self.max_batch = min(self.memory.max_batch, self.table.capacity)
        self.graphs = replays.decode_graphs(self)
        self.prompts = replays.prompt_graphs(self)
        # queue decode steps from device-side tokens: pays where the device runs behind the host
        self.chains_steps = _auto(self.options["chain_steps"], self.graphs is not None)
        self.warm_up_seconds: float | None = None  # how long the warm-up before Ready took
        if self.options["warm_up"] and self.packs:
            self._warm_up()
        self.captures_left = replays.CapturesLeft(self)  # the graphs ``idle`` captures

    # --- setup ------------------------------------------------------------------------------

    def _plan_memory(self) -> memory.MemoryPlan:
        """Slots and batch: on one GPU sized together with the passes and graphs (``memory.plan``);
        elsewhere within ``--cpu_cache_bytes`` (or, layers spread over GPUs, half the first one's
        free memory: ``memory.plan_elsewhere``)."""
        shape = self.shape
        given, fraction = self.options["max_batch"], self.options["cache_memory_fraction"]
        if self.device.type == "cuda" and len(self.devices) == 1:
            free, _ = torch.cuda.mem_get_info(self.device)
            graph_lengths = len(self.lengths) if self.options["cuda_graphs"] else 0
            return memory.plan(shape, free, self.max_context, self.prefill_tokens, graph_lengths,
                               list(BATCH_BUCKETS), given, fraction)
        if self.device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(self.device)[0] * (0.5 if fraction is None else fraction))
        else:
            budget = int(self.options["cpu_cache_bytes"])
        return memory.plan_elsewhere(shape, budget, self.max_context, given)

    def _allocate_cache(self, slots: int) -> SlotCache:
        shape, layers = self.shape, self.shape.layers
        return SlotCache(layers, slots, shape.kv_heads, self.max_context, shape.head_dim, self.model.dtype,
                         weights.layer_devices(self.model, layers, self.device))

    def prompt_forward(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                        tiles: torch.Tensor) -> torch.Tensor:
        """The last hidden states of a packed pass, (1, T, hidden); attention by ``tiles``."""
        self.cache.bind(slots, positions, slice(0, self.cache.slots), self.max_context)
        mask = packed.no_mask(self.model.dtype, self.device)
        with packed.tiled_pass(tiles):
            out = self.model.base_model(input_ids=ids, position_ids=positions, attention_mask=mask,
                                        use_cache=True, **{self._cache_kwarg: self.cache})
        return out.last_hidden_state

    # --- stepping ---------------------------------------------------------------------------

    def idle(self) -> float | None:  # Backend.idle
        return self.captures_left.capture_one()

    @torch.inference_mode()
    def forward(self, batch: list[StepInput]) -> StepOutput:
        self.stepped_at = time.perf_counter()
        self.threads.use_for(sum(len(item.tokens) for item in batch))
        rows = [self._row(item) for item in batch]
        self.cache.flush()  # the slot copies of the admissions, in one launch
        every: dict[int, Any] = {}
        if self.graphs and self._is_plain_decode(rows):
            by_slot = sorted(rows, key=lambda r: r.slot)
            last = self.graphs.run([r.tokens[0] for r in by_slot], [r.start for r in by_slot])
            last = self._in_order([r.slot for r in rows], last)
        elif self.packs:
            last, every = self._mixed(rows)
        else:
            last, every = self._eager(rows)
        for row in rows:
            self.table.append(row.item.seq_id, row.tokens)
        return StepOutput(last, every)

    def _row(self, item: StepInput) -> Row:
        if item.seq_id in self.table.slot_of:
            return Row(item, self.table.slot_of[item.seq_id], self.table.length(item.seq_id), item.tokens)
        assert len(item.tokens) <= self.max_context, "the session admits no prompt beyond the context"
        # a cached prefix serves a SCORE up to the first token whose logits it reads
        matched = item.tokens[: item.logits_from + 1] if item.all_logits else item.tokens
        slot, kept = self.table.admit(item.seq_id, matched)
        return Row(item, slot, kept, item.tokens[kept:])

    def _is_plain_decode(self, rows: list[Row]) -> bool:
        return all(len(r.tokens) == 1 for r in rows) and {r.slot for r in rows} == set(range(len(rows)))

    def _mixed(self, rows: list[Row]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Single decode tokens together (from a graph where one fits), prompt chunks packed
        (in parts of at most ``prefill_tokens``); float32 last logits in the batch's order."""
        decode = [i for i, r in enumerate(rows) if len(r.tokens) == 1 and not r.item.all_logits]
        taken = set(decode)
        parts: list[tuple[list[int], torch.Tensor]] = []
        if decode:
            parts.append((decode, self._decode_rows([rows[i] for i in decode])))
        every: dict[int, torch.Tensor] = {}
        for part in self._prefill_parts([i for i in range(len(rows)) if i not in taken], rows):
            last, part_every = self._packed_pass([rows[i] for i in part])
            parts.append((part, last))
            every.update(part_every)
        if len(parts) == 1 and len(parts[0][0]) == len(rows):  # one part, already in the batch's order
            return parts[0][1].float(), every
        device = parts[0][1].device
        out = torch.empty((len(rows), self.vocab_size), dtype=torch.float32, device=device)
        for indices, logits in parts:
            out[self.ops.tensor(indices, device)] = logits.to(device, torch.float32)
        return out, every

    def _prefill_parts(self, indices: list[int], rows: list[Row]) -> list[list[int]]:
        parts: list[list[int]] = []
        size = 0
        for i in indices:
            n = len(rows[i].tokens)
            if not parts or size + n > self.prefill_tokens:
                parts.append([])
                size = 0
            parts[-1].append(i)
            size += n
        return parts

    def _decode_rows(self, rows: list[Row]) -> torch.Tensor:
        tokens, positions, slots = ([r.tokens[0] for r in rows], [r.start for r in rows],
                                    [r.slot for r in rows])
        if self.graphs and self.graphs.fits(slots, positions):
            return self.graphs.run_scattered(tokens, positions, slots)
        if self.lean is not None and slots == list(range(slots[0], slots[0] + len(slots))):
            # rows in neighbouring slots, in order (a lone stream's): straight to the lean step
            at = torch.tensor(positions).view(-1, 1)
            return self.lean.logits(torch.tensor(tokens).view(-1, 1), at, torch.tensor(slots).view(-1, 1),
                                    slice(slots[0], slots[-1] + 1), max(positions) + 1)
        return self._eager(rows)[0]  # one token each: nothing is padded

    def _packed_pass(self, rows: list[Row]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        batch = packed.pack([(r.tokens, r.slot, r.start, self._logits_from(r)) for r in rows])
        logits = self.packed_logits(batch)
        last = logits[self.ops.tensor([end - 1 for _, end in batch.kept_of], logits.device)]
        every = {r.item.seq_id: logits[start:end]
                 for r, (start, end) in zip(rows, batch.kept_of, strict=True) if r.item.all_logits}
        return last, every

    @staticmethod
    def _logits_from(row: Row) -> int:
        """The first of ``row.tokens`` whose logits are read: the last, or for a SCORE the one at
        ``StepInput.logits_from`` (a cached prefix never reaches past it; see ``_row``)."""
        last = len(row.tokens) - 1
        if not row.item.all_logits:
            return last
        return min(last, max(0, row.item.logits_from - (len(row.item.tokens) - len(row.tokens))))

    def packed_logits(self, batch: packed.PackedRows) -> torch.Tensor:
        """Logits of shape (len(batch.keep), vocab): the output head runs on those positions only."""
        if self.prompts and self.prompts.fits(batch):
            hidden = self.prompts.run(batch)
            keep = self.ops.to_device(torch.from_numpy(batch.keep), hidden.device)
            return self.model.get_output_embeddings()(hidden[keep])
        ids, positions, slots = (self.ops.to_device(torch.from_numpy(a), self.device)
                                 for a in (batch.ids, batch.positions, batch.slots))
        keep = self.ops.to_device(torch.from_numpy(batch.keep), self._keep_device)
        if self.lean is not None:  # its layers and output head rather than transformers' forward
            return self.lean.head_logits(self.lean.prompt_hidden(ids, positions, slots, batch.segments)[keep])
        ids, positions, slots = ids.view(1, -1), positions.view(1, -1), slots.view(1, -1)
        self.cache.bind(slots, positions, slice(0, self.cache.slots), self.max_context)
        kwargs: dict[str, Any] = {self._cache_kwarg: self.cache}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        mask = packed.no_mask(self.model.dtype, self.device)
        with packed.packed_pass(batch.segments):
            out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                             **kwargs)
        return out.logits[0] if self._keeps_logits else out.logits[0, keep]

    def _warm_up(self) -> None:
        self.warm_up_seconds = warm_up.run(self)
        console.print(f"Warmed up in {self.warm_up_seconds:.1f} s")

    def _eager(self, rows: list[Row]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        low = min(r.slot for r in rows)
        count = max(r.slot for r in rows) + 1 - low
        width = max(len(r.tokens) for r in rows)
        # built in numpy: a burst of new requests is many rows, and every torch call is a turn for
        # the interpreter's lock with the event loop
        ids = np.zeros((count, width), dtype=np.int64)
        positions = np.zeros((count, width), dtype=np.int64)
        slots = np.full((count, width), self.table.scratch, dtype=np.int64)
        for r in rows:
            n = len(r.tokens)
            ids[r.slot - low, :n] = r.tokens
            positions[r.slot - low, :n] = np.arange(r.start, r.start + n)
            slots[r.slot - low, :n] = r.slot
        length = next(n for n in self.lengths if n > max(r.start + len(r.tokens) - 1 for r in rows))
        ids_at, positions_at, slots_at = (self.ops.to_device(torch.from_numpy(a), self.device)
                                          for a in (ids, positions, slots))
        logits = self.model_step(ids_at, positions_at, slots_at, slice(low, low + count), length)
        order = [r.slot - low for r in rows]
        if width == 1 and order == list(range(count)):  # decode rows in slot order: a view, no copy
            last = logits[:, 0]
        else:
            row, column = self.ops.tensor([order, [len(r.tokens) - 1 for r in rows]], logits.device)
            last = logits[row, column]
        every = {r.item.seq_id: logits[r.slot - low, : len(r.tokens)] for r in rows if r.item.all_logits}
        return last, every

    @torch.inference_mode()
    def forward_sampled(self, seq_ids: list[int], tokens: torch.Tensor) -> StepOutput | None:
        self.stepped_at = time.perf_counter()
        slot_of = self.table.slot_of
        slots = [slot_of[i] for i in seq_ids]
        positions = self.table.lengths(slots)
        if sorted(slots) != list(range(len(slots))) or max(positions) >= self.max_context:
            return None
        if slots != list(range(len(slots))):  # rows by slot for the pass
            by_slot = sorted(range(len(slots)), key=slots.__getitem__)
            tokens = tokens[self.ops.tensor(by_slot, tokens.device)]
            positions = [positions[i] for i in by_slot]
        if tokens.device != self.device:
            tokens = tokens.to(self.device)
        last = self.graphs.run(tokens, positions) if self.graphs else self._decode_eager(tokens, positions)
        last = self._in_order(slots, last)
        self.table.append_pending(seq_ids)
        return StepOutput(last, {})

    def rows_order(self, seq_ids: list[int]) -> list[int] | None:  # ChainedSteps' optional key
        """Each sequence's slot: a chained step whose rows come in slot order runs its graph
        without reordering its tokens and logits."""
        slot_of = self.table.slot_of
        return [slot_of[i] for i in seq_ids] if all(i in slot_of for i in seq_ids) else None

    def _in_order(self, slots: list[int], by_slot: torch.Tensor) -> torch.Tensor:
        """Rows computed slot by slot (0..n-1), back in the batch's order (usually the same)."""
        if slots == list(range(len(slots))):
            return by_slot
        return by_slot[self.ops.tensor(slots, by_slot.device)]

    def _decode_eager(self, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """One token for each of slots 0..n-1, without a graph."""
        n = len(positions)
        at = self.ops.tensor(positions, self.device).view(n, 1)
        slots = self.ops.to_device(torch.arange(n).view(n, 1), self.device)
        length = next(bucket for bucket in self.lengths if bucket > max(positions))
        return self.model_step(tokens.view(n, 1), at, slots, slice(0, n), length)[:, -1]

    def confirm(self, seq_ids: list[int], tokens: list[int]) -> None:
        self.table.confirm(seq_ids, tokens)

    def decode_forward(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                       length: int) -> torch.Tensor:
        return self.model_step(ids, positions, slots, slice(0, ids.shape[0]), length)

    def model_step(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    read_rows: slice, length: int, hidden: bool = False) -> torch.Tensor:
        """Logits of shape (rows, tokens, vocab), or with ``hidden`` the last hidden states; row
        i reads slot ``read_rows.start + i``."""
        if self.lean is not None and ids.shape[1] == 1 and not hidden:
            return self.lean.logits(ids, positions, slots, read_rows, length)[:, None]
        self.cache.bind(slots, positions, read_rows, length)
        decoding = ids.shape[1] == 1 and self.slot_kernels  # the kernel reads to each row's position
        dtype = self.model.dtype
        mask = (packed.no_mask(dtype, self.device) if decoding
                else packed.causal_mask(positions, length, dtype))
        module = self.model.base_model if hidden else self.model
        # given the context's length (--any_length_graphs), the kernel splits positions evenly
        with packed.decode_pass(positions[:, 0], self.any_length) if decoding else contextlib.nullcontext():
            out = module(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                         **{self._cache_kwarg: self.cache})
        return out.last_hidden_state if hidden else out.logits

    def take_over(self, seq_id: int, new_id: int, tokens: list[int]) -> int | None:  # backend.TakesOver
        return self.table.take_over(seq_id, new_id, tokens)

    def release(self, seq_id: int) -> None:
        self.table.release([seq_id])

    def release_all(self, seq_ids: list[int]) -> None:
        self.table.release(seq_ids)

    # --- description ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return description.describe(self)

    def tokenizer_json(self) -> str | None:
        found = find_tokenizer_json(self.path) or cached_tokenizer_json(self.path)
        return Path(found).read_text(encoding="utf-8") if found else None

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str | None:  # backend.ChatTemplates
        return chat.chat_prompt(self.path, messages)


def _auto(option: bool | None, default: bool) -> bool:
    """An engine option left at None follows the default that suits the device."""
    return default if option is None else bool(option)


def _first(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        return int(value[0]) if value else None
    return None if value is None else int(value)
