"""The llama.cpp backend: step-level batched forward passes over ``llama-cpp-python``.

How several sequences share one model (the multi-sequence design):

* The model is loaded with ``Llama(model_path=..., **loader_kwargs)``, so every loader argument
  means exactly what it means to llama-cpp-python. ``Llama`` always builds a context for one
  sequence; we replace it by a context made from the same ``context_params`` with
  ``n_seq_max`` sequence *slots* and a separate (non-unified) KV stream of ``n_ctx`` cells
  per slot, so each resident sequence is guaranteed its full ``n_ctx`` context.
* A step's sequences go into one ``llama_batch`` (each token carrying its slot as ``seq_id``
  and its own position) and one ``llama_decode`` per ``n_batch`` tokens; logits are requested
  for the last token of each sequence, or for every token of a scored one.
* Engine sequence ids map to slots. When more sequences are live than there are slots, the
  least recently used sequence that is not in the current group is swapped out: its KV state
  is copied to host memory (``llama_state_seq_get_data``) and copied back into a free slot
  (``llama_state_seq_set_data``) when it next steps. Results do not depend on swapping, but
  it costs time, so set ``n_seq_max`` to the number of streams you expect at once.
* ``release`` removes a sequence's cells (``llama_memory_seq_rm``) and frees its slot.

Defaults: ``n_ctx`` (per sequence, = ``max_context``) is the model's training context capped
at 2048 (``n_ctx=0``: the full training context); ``n_seq_max`` is 4 (memory: ``n_seq_max *
n_ctx`` KV cells); ``verbose=False``; ``type_k``/``type_v`` may be given as names
(``f32``, ``f16``, ``q8_0``, ...). ``cuda=True`` means ``n_gpu_layers=-1`` unless given.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp import _internals as internals

from lmql_core.plugin import Backend, LMQLError, NumpyOps, StepInput, StepOutput, call_text, versions
from lmql_llamacpp.gguf_vocab import tokenizer_json_from_gguf
from lmql_llamacpp.options import DEFAULT_SEQUENCES, llama_parameters

DEFAULT_N_CTX = 2048
KV_PAD = 256


class ContextOverflow(LMQLError):
    pass


@dataclass
class _Sequence:
    length: int = 0  # tokens in its KV cache
    slot: int | None = None  # llama.cpp seq_id while resident
    saved: bytes | None = None  # KV state while swapped out
    last_used: int = 0


def _kv_type(value: Any) -> Any:
    """``"f32"``/``"q8_0"``/... -> the GGML type number ``Llama`` expects; numbers pass."""
    if isinstance(value, str):
        found = getattr(llama_cpp, f"GGML_TYPE_{value.upper()}", None)
        if found is None:
            raise LMQLError(f"unknown KV cache type '{value}' (use f32, f16, bf16, q8_0, q4_0, ...)")
        return found
    return value


def _meta(model: Any, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(model.model, key.encode(), buffer, len(buffer))
    return buffer.value.decode("utf-8", "replace") if n >= 0 else None


def _n_ctx_train(path: str) -> int:
    """The model's training context from the file's metadata (0 if it has none).

    Read with a vocabulary-only load, which skips the weights (and leaves ``n_ctx_train`` 0,
    hence the metadata key).
    """
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        model = internals.LlamaModel(path_model=path, params=params, verbose=False)
    except ValueError as e:
        raise LMQLError(f"llama.cpp could not read '{path}': {e}") from None
    try:
        value = _meta(model, f"{_meta(model, 'general.architecture')}.context_length")
        return int(value) if value and value.isdigit() else 0
    finally:
        model.close()


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    """``Llama`` silently drops keyword arguments it does not know; we refuse them."""
    known = set(llama_parameters())
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise LMQLError(f"unknown llama.cpp loader argument(s) {', '.join(unknown)}; Llama(...) "
                        f"takes {', '.join(sorted(known))} (and lmql's n_seq_max)")


def llama_kwargs(path: str, cuda: bool, dtype: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``Llama(model_path=path, ...)``."""
    _check_kwargs(kwargs)
    result = dict(kwargs)
    if dtype is not None:
        warnings.warn(f"dtype={dtype!r} is ignored by the llama.cpp backend: a GGUF file's weight "
                      "types are fixed when it is made (pick a quantized file instead); the KV "
                      "cache type is set with type_k/type_v", stacklevel=3)
    if cuda:
        if not llama_cpp.llama_supports_gpu_offload():
            warnings.warn("cuda=True, but this llama-cpp-python build cannot offload to a GPU; "
                          "running on the CPU (install a CUDA build of llama-cpp-python)", stacklevel=3)
        result.setdefault("n_gpu_layers", -1)
    for key in ("type_k", "type_v"):
        if key in result:
            result[key] = _kv_type(result[key])
    result.setdefault("verbose", False)
    n_ctx = result.get("n_ctx")
    if n_ctx is None or n_ctx == 0:
        train = _n_ctx_train(path)
        if train <= 0:
            result["n_ctx"] = DEFAULT_N_CTX
        else:
            result["n_ctx"] = train if n_ctx == 0 else min(train, DEFAULT_N_CTX)
    return result


class LlamaCppBackend(Backend):
    max_context: int  # tokens per sequence: n_ctx

    def __init__(self, model: str, *, cuda: bool = False, dtype: str | None = None,
                 n_seq_max: int = DEFAULT_SEQUENCES, **kwargs: Any) -> None:
        self.name = model
        self.path = os.path.abspath(os.path.expanduser(model))
        if not os.path.isfile(self.path):
            raise LMQLError(f"no GGUF file at '{model}' (resolved to {self.path})")
        limit = int(llama_cpp.llama_max_parallel_sequences())
        if not 1 <= int(n_seq_max) <= limit:
            raise LMQLError(f"n_seq_max must be between 1 and {limit}, got {n_seq_max}")
        self.kwargs = llama_kwargs(self.path, cuda, dtype, kwargs)
        self.n_slots = int(n_seq_max)
        self.n_ctx = int(self.kwargs["n_ctx"])
        try:
            self.llama = Llama(model_path=self.path, **self.kwargs)
        except ValueError as e:
            raise LMQLError(f"llama.cpp could not load '{model}': {e}") from None
        try:
            self._ctx = self._make_context()
        except ValueError as e:
            self.llama.close()
            raise LMQLError(f"llama.cpp could not make a context of {self.n_slots} sequences x "
                            f"{self.n_ctx} tokens for '{model}' ({e}; too little memory? lower "
                            "n_ctx or n_seq_max)") from None
        self.n_batch = int(self._ctx.params.n_batch)
        self.vocab_size = int(self.llama.n_vocab())
        eos = int(self.llama.token_eos())
        self.eos_token_id = eos if eos >= 0 else None
        bos = int(self.llama.token_bos())  # sent to clients: the file says whether prompts start with it
        self.bos_token_id = bos if bos >= 0 and self.llama._model.add_bos_token() else None
        self.max_context = min(self.n_ctx, int(llama_cpp.llama_n_ctx_seq(self._ctx.ctx)))
        self.ops = NumpyOps()
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._seqs: dict[int, _Sequence] = {}
        self._free_slots = list(range(self.n_slots))
        self._clock = 0
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: tuple[str | None] | None = None  # computed on first use

    def _make_context(self) -> Any:
        """Swap ``Llama``'s one-sequence context for one with ``n_seq_max`` KV streams."""
        source = self.llama.context_params
        params = type(source).from_buffer_copy(source)
        params.n_seq_max = self.n_slots
        # llama.cpp pads each sequence's context to a multiple of 256 cells (and says so when
        # the total does not divide evenly): ask for the padded size directly
        params.n_ctx = -(-self.n_ctx // KV_PAD) * KV_PAD * self.n_slots
        params.kv_unified = False
        self.llama._ctx.close()  # free its KV cache before allocating ours
        context = internals.LlamaContext(model=self.llama._model, params=params, verbose=False)
        if context.memory is None:
            context.close()
            raise ValueError("this model type has no KV cache to hold sequences")
        return context

    # --- forward ------------------------------------------------------------------------------

    def forward(self, batch: list[StepInput]) -> StepOutput:
        with self._lock:
            self._check(batch)
            last = np.empty((len(batch), self.vocab_size), dtype=np.float32)
            every: dict[int, Any] = {}
            for group in self._groups(batch):
                try:
                    self._make_resident([item.seq_id for _, item in group])
                    self._decode(group, last, every)
                except Exception:
                    for _, item in group:  # their caches are in an unknown state now
                        self._forget(item.seq_id)
                    raise
            return StepOutput(last, every)

    def _check(self, batch: list[StepInput]) -> None:
        seen: set[int] = set()
        for item in batch:
            if item.seq_id in seen:
                raise LMQLError(f"sequence {item.seq_id} appears twice in one step")
            seen.add(item.seq_id)
            if not item.tokens:
                raise LMQLError(f"sequence {item.seq_id} appends no tokens")
            bad = [t for t in item.tokens if not 0 <= t < self.vocab_size]
            if bad:
                raise LMQLError(f"token ids {bad[:5]} are outside this model's vocabulary "
                                f"(0..{self.vocab_size - 1})")
            known = self._seqs.get(item.seq_id)
            total = (known.length if known else 0) + len(item.tokens)
            if total > self.max_context:
                raise ContextOverflow(
                    f"sequence {item.seq_id} would hold {total} tokens, but the llama.cpp context "
                    f"holds {self.max_context} per sequence (load the model with a larger n_ctx)")

    def _groups(self, batch: list[StepInput]) -> list[list[tuple[int, StepInput]]]:
        """Consecutive groups of at most ``n_seq_max`` sequences, each fitting in the slots."""
        rows = list(enumerate(batch))
        return [rows[i : i + self.n_slots] for i in range(0, len(rows), self.n_slots)]

    def _make_resident(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            seq = self._seqs.setdefault(seq_id, _Sequence())
            self._clock += 1
            seq.last_used = self._clock
            if seq.slot is not None:
                continue
            seq.slot = self._free_slots.pop() if self._free_slots else self._evict(seq_ids)
            if seq.saved is not None:
                self._restore(seq)

    def _evict(self, keep: list[int]) -> int:
        """Swap the least recently used resident sequence outside ``keep`` to host memory."""
        victims = [(s.last_used, i) for i, s in self._seqs.items()
                   if s.slot is not None and i not in keep]
        _, victim_id = min(victims)
        victim = self._seqs[victim_id]
        slot = victim.slot
        assert slot is not None
        size = llama_cpp.llama_state_seq_get_size(self._ctx.ctx, slot)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx.ctx, buffer, size, slot)
        if written != size:
            raise LMQLError(f"llama.cpp saved {written} of {size} bytes of a sequence's state")
        victim.saved, victim.slot = bytes(buffer), None
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, slot, -1, -1)
        return slot

    def _restore(self, seq: _Sequence) -> None:
        assert seq.saved is not None and seq.slot is not None
        data = (ctypes.c_uint8 * len(seq.saved)).from_buffer_copy(seq.saved)
        if llama_cpp.llama_state_seq_set_data(self._ctx.ctx, data, len(seq.saved), seq.slot) == 0:
            raise LMQLError("llama.cpp could not restore a swapped-out sequence")
        seq.saved = None

    def _decode(self, group: list[tuple[int, StepInput]], last: np.ndarray,
                every: dict[int, Any]) -> None:
        # (row in the step, sequence, token, position, wants logits)
        flat: list[tuple[int, _Sequence, int, int, bool]] = []
        for row, item in group:
            seq = self._seqs[item.seq_id]
            n = len(item.tokens)
            for i, token in enumerate(item.tokens):
                flat.append((row, seq, token, seq.length + i, item.all_logits or i == n - 1))
        rows: dict[int, list[np.ndarray]] = {row: [] for row, item in group if item.all_logits}
        for start in range(0, len(flat), self.n_batch):
            chunk = flat[start : start + self.n_batch]
            logits = self._run(chunk)
            out = 0
            for row, seq, _, _, wanted in chunk:
                seq.length += 1
                if not wanted:
                    continue
                if row in rows:
                    rows[row].append(logits[out])
                last[row] = logits[out]
                out += 1
        for row, item in group:
            if item.all_logits:
                every[item.seq_id] = np.stack(rows[row])

    def _run(self, chunk: list[tuple[int, _Sequence, int, int, bool]]) -> np.ndarray:
        b = self._batch
        for i, (_, seq, token, pos, wanted) in enumerate(chunk):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq.slot
            b.logits[i] = wanted
        b.n_tokens = len(chunk)
        code = llama_cpp.llama_decode(self._ctx.ctx, b)
        if code != 0:
            raise LMQLError(f"llama_decode failed with code {code} on a batch of {len(chunk)} tokens")
        n_out = sum(1 for c in chunk if c[4])
        pointer = llama_cpp.llama_get_logits(self._ctx.ctx)
        return np.ctypeslib.as_array(pointer, shape=(n_out, self.vocab_size)).copy()

    # --- lifecycle ----------------------------------------------------------------------------

    def _forget(self, seq_id: int) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None and seq.slot is not None:
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.slot, -1, -1)
            self._free_slots.append(seq.slot)

    def release(self, seq_id: int) -> None:
        with self._lock:
            self._forget(seq_id)

    def info(self) -> dict[str, Any]:
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        gpu_layers = int(self.kwargs.get("n_gpu_layers", 0) or 0)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.llama._model.model, desc, len(desc))
        return {
            "backend": "llama.cpp",
            "path": self.path,
            "constructor": call_text("Llama", model_path=self.path, **self.kwargs),
            "model_desc": desc.value.decode("utf-8", "replace"),
            "n_ctx": self.max_context,
            "n_seq_max": self.n_slots,
            "n_ctx_total": int(llama_cpp.llama_n_ctx(self._ctx.ctx)),
            "n_batch": self.n_batch,
            "n_gpu_layers": gpu_layers,
            "gpu_offload_supported": offload,
            "devices": ["gpu", "cpu"] if offload and gpu_layers != 0 else ["cpu"],
            "versions": versions("llama-cpp-python", "lmql-llamacpp", "lmql-core"),
        }

    def tokenizer_json(self) -> str | None:
        """The ``tokenizer.json`` next to the GGUF file, else one rebuilt from the vocabulary in
        the file (None for vocabularies ``gguf_vocab`` cannot rebuild); computed once."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                beside = os.path.join(os.path.dirname(self.path), "tokenizer.json")
                if os.path.isfile(beside):
                    with open(beside, encoding="utf-8") as f:
                        self._tokenizer = (f.read(),)
                else:
                    self._tokenizer = (tokenizer_json_from_gguf(self.path),)
            return self._tokenizer[0]

    def close(self) -> None:
        with self._lock:
            if self._batch is not None:
                llama_cpp.llama_batch_free(self._batch)
                self._batch = None
            self._seqs.clear()
            self._ctx.close()
            self.llama.close()
