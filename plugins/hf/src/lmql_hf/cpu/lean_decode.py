"""Decode steps of Llama (and Qwen2, Qwen3) and GPT-2 on the CPU as direct torch operations over
the model's own weights and the slot cache, without transformers' modules, masks and cache calls.

On the CPU a decode step of a few rows is bound by the interpreter, not arithmetic: transformers
spends ~1.35 ms of lmql-tiny's 1.7 ms one-row step in per-module Python (hooks, keyword
arguments, mask and cache bookkeeping). Here a Llama layer is ~22 torch calls, each a few us of
interpreter and dispatch (so every call counts: lmql-tiny's one-row step 0.75 -> 0.57 ms of CPU
from 33 calls a layer to 22): RMSNorm with its mean as a product (``_rms_norm``), q, k and v as
one product over their concatenated weights, stored by columns (the projections keep views of
it), RoPE as one multiply, a roll and an ``addcmul`` with each row's cos and sin selected once a
step from a table of every position's computed by the model's own rotary module, the new keys
and values written into the slot cache with one ``index_copy_`` each (flat row indices computed
once per step, shared by every layer), attention as one SDPA call per layer against each row's
slot with a mask computed once per step, and the residuals added in the output and down
products' own calls (``packed_linear.plus_by_columns``). Results differ from transformers' by
rounding only. Every other architecture, dtype or option keeps transformers' forward
(``LeanDecoder.of`` says None).

Prompt passes (``prompt_hidden``) run the same layers over a packed row of prompt chunks
(``cache.packed``): only attention differs, each chunk's queries attending causally to its own
slot. transformers' forward took ~3 ms of a one-prompt step of lmql-tiny, this ~1 ms.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from lmql_hf.cache import packed
from lmql_hf.cache.slot_cache import SlotCache
from lmql_hf.cpu.head_product import HeadProduct
from lmql_hf.cpu.packed_linear import Product, Role, packed_roles, plus_product_of, product_of
from lmql_hf.cpu.threads import HostThreads

log = logging.getLogger(__name__)

# the output head is also held by columns up to this size (head_product.py)
HEAD_COPY_BYTES = 256 << 20
# rotary embeddings whose angles depend on the position only (not on the sequence's length)
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
_AS_SET = nullcontext()  # the threads stay as set (reusable)
GPT2_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclass
class Step:
    """What every layer of one step shares, computed once: a decode step's rows (one token
    each), or a prompt pass's tokens (``groups``: its chunks, attended per group)."""

    positions: torch.Tensor  # (rows,)
    heads_at: torch.Tensor  # (rows x kv_heads,): flat row of each new key in a layer's cache
    mask: torch.Tensor | None = None  # decode: (rows, 1, 1, length), the cached positions each row reads
    read_rows: slice = field(default_factory=lambda: slice(0))
    length: int = 0
    groups: list[packed.Group] | None = None
    chunk_masks: list[torch.Tensor | None] | None = None  # each group's (``packed.lower_right_mask``)


def _rms_norm(weight: torch.Tensor, eps: float) -> Product:
    """transformers' RMSNorm, ``x * rsqrt(mean(x**2) + eps) * weight``, its mean as a product
    with a column of 1/n: torch's ``rms_norm`` on the CPU is a composite of ~8 operations whose
    mean's reduction also slows the matrix product after it (one row of 192, on 2 cores of an AMD
    EPYC: 9.3 -> 7.7 us alone, 17 norms between lmql-tiny's 17 products 420 -> 358 us)."""
    epsilon = torch.full((1, 1), eps, dtype=weight.dtype)
    mean_of = torch.full((weight.shape[0], 1), 1.0 / weight.shape[0], dtype=weight.dtype)
    return lambda x: x * torch.addmm(epsilon, x * x, mean_of).rsqrt_() * weight


def _head_product(model: Any) -> HeadProduct:
    """The output head's product, its weight held by rows (the model's own) and, up to
    HEAD_COPY_BYTES, by columns (packed for oneDNN at any size, if tuning chooses it)."""
    weight = model.get_output_embeddings().weight.detach()
    return HeadProduct(weight, copies=weight.numel() * weight.element_size() <= HEAD_COPY_BYTES)


class LeanDecoder:
    """One family's decode step; ``logits`` is what ``HFBackend.model_step`` returns for one
    token per row, as (rows, vocab)."""

    def __init__(self, model: Any, cache: SlotCache, threads: HostThreads | None,
                 packed: bool | None) -> None:
        """``threads``: which parts run on every core (None: as set); ``packed``: whether the
        layers' linear modules are packed for oneDNN (``packed_linear.packed_roles``)."""
        self.model, self.cache, self.threads = model, cache, threads
        self.switches_threads = threads is not None and threads.by_size is not None
        with self._cores(every=False):  # the layers' threads, for timing them
            self.packed_roles = packed_roles(self.layer_modules(model), self.ROLES, packed)
        self.columns = torch.arange(cache.max_len)
        keys = cache.keys[0]  # (slots, kv_heads, max_len, dim): every layer's view alike
        # in a layer's cache viewed as (slots x kv_heads x max_len, dim): a slot's first row, and
        # each head's first row from there
        self.slot_rows = keys.shape[1] * keys.shape[2]
        self.head_rows = torch.arange(keys.shape[1]) * keys.shape[2]
        dim = keys.shape[3]
        self.flat_keys = [k.view(-1, dim) for k in cache.keys]  # the cache's tensors never change
        self.flat_values = [v.view(-1, dim) for v in cache.values]
        self.head = _head_product(model)

    ROLES: dict[str, Role] = {}  # each kind of linear layer: its modules in a decoder layer

    @staticmethod
    def of(model: Any, cache: SlotCache, threads: HostThreads | None = None,
           packed: bool | None = False) -> LeanDecoder | None:
        """The lean step for ``model`` on this cache, or None where transformers' forward stays."""
        if model.dtype != torch.float32 or model.device.type != "cpu" or cache.keys[0].dtype != torch.float32:
            return None
        family = FAMILIES.get(type(model).__name__)
        if family is None or not family.supports(model.config):
            return None
        try:
            return family(model, cache, threads, packed)
        except AttributeError as e:  # modules of a transformers release before 4.48 (no ``scaling``...)
            log.warning("the lean CPU step is off for %s (%s): transformers' forward runs instead",
                        type(model).__name__, e)
            return None

    def logits(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, read_rows: slice,
               length: int) -> torch.Tensor:
        """``ids``, ``positions``, ``slots``: (rows, 1); row i reads slot ``read_rows.start + i``
        up to its own position (at most ``length``) and writes its key and value in ``slots[i]``."""
        step = self._step(positions.view(-1), slots.view(-1), read_rows, length)
        with self._cores(every=False):
            hidden = self.embed(ids.view(-1), step.positions)
            for index in range(len(self.cache.keys)):
                hidden = self.layer(index, hidden, step)
            normed = self.final_norm(hidden)
        return self.head_logits(normed)

    def prompt_hidden(self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                      segments: list[packed.Segment]) -> torch.Tensor:
        """A packed prompt pass: ``ids``, ``positions``, ``slots`` (T,) hold every chunk's tokens
        side by side (``packed.pack``), each written into its slot and attending causally to it;
        the final hidden states, normed, (T, hidden). Its layers run on the step's threads."""
        groups = packed.group(segments)
        dtype = self.cache.keys[0].dtype
        masks = [None if g.start == 0 else packed.lower_right_mask(g.length, g.start, dtype, ids.device)
                 for g in groups]  # once for every layer
        step = Step(positions, self._heads_at(positions, slots), groups=groups, chunk_masks=masks)
        self._at_positions(positions)
        hidden = self.embed(ids, positions)
        for index in range(len(self.cache.keys)):
            hidden = self.layer(index, hidden, step)
        return self.final_norm(hidden)

    def head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """The output head applied to final hidden states (rows, hidden), on every core (prompt
        passes' too: MKL's form of transformers' head took 6.8-8.4 ms of a 12-14 ms 32-token
        GPT-2 prompt pass on an AMD EPYC, oneDNN's 1.9)."""
        with self._cores(every=True):
            return self.head(normed)

    def tune(self, most_rows: int) -> dict[int, str]:
        """Choose the output head's call form for each bucket of rows by timing them (on every
        core, as steps run it): the form chosen, by bucket."""
        with self._cores(every=True):
            return self.head.tune(most_rows)

    def _cores(self, every: bool) -> AbstractContextManager[None]:
        """A decode step's layers on all cores but the event loop's, its head on every core: the
        layers' products of a few rows are small, and a team of threads waits at each of their
        ~15 operations for a core the loop (or another process) holds, where the head's product,
        by far the largest, halves (4-layer GPT-2 served, 8 streams: 1,250-1,400 -> 1,690-1,800
        tok/s; 32 streams the same within the spread)."""
        return self.threads.cores(every) if self.threads is not None and self.switches_threads else _AS_SET

    def _step(self, positions: torch.Tensor, slots: torch.Tensor, read_rows: slice, length: int) -> Step:
        self._at_positions(positions)
        if positions.shape[0] == 1:  # a lone row reads its keys exactly: no mask (~8% of its step)
            return Step(positions, self._heads_at(positions, slots), None, read_rows, int(positions[0]) + 1)
        mask = (self.columns[:length] <= positions[:, None]).view(-1, 1, 1, length)
        return Step(positions, self._heads_at(positions, slots), mask, read_rows, length)

    def _heads_at(self, positions: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return ((slots * self.slot_rows + positions)[:, None] + self.head_rows).view(-1)

    def _at_positions(self, positions: torch.Tensor) -> None:
        """What the family's layers read of the step's positions, computed once (RoPE's angles)."""

    def attend(self, index: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               step: Step, scale: float) -> torch.Tensor:
        """Write the rows' new ``key`` and ``value`` (rows, kv_heads, dim) into the cache and
        attend each row's ``query`` (rows, heads, dim) to its slot: (rows, heads x dim)."""
        keys, values = self.cache.keys[index], self.cache.values[index]
        dim = keys.shape[3]
        self.flat_keys[index].index_copy_(0, step.heads_at, key.reshape(-1, dim))
        self.flat_values[index].index_copy_(0, step.heads_at, value.reshape(-1, dim))
        if step.groups is not None:
            return self._attend_chunks(query, keys, values, step, scale)
        rows, kv_heads = query.shape[0], keys.shape[1]
        # grouped-query heads: each key/value head's query heads attend as one head's rows
        grouped = query.reshape(rows, kv_heads, -1, dim)
        read = step.read_rows, slice(None), slice(0, step.length)
        out = functional.scaled_dot_product_attention(grouped, keys[read], values[read], attn_mask=step.mask,
                                                      scale=scale)
        return out.reshape(rows, -1)

    @staticmethod
    def _attend_chunks(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: Step,
                       scale: float) -> torch.Tensor:
        """A prompt pass's attention: each group's chunks (equal length and start, neighbouring
        slots) causally to their own slots, in one call per group; (tokens, heads x dim)."""
        _, heads, dim = query.shape
        repeat = heads // keys.shape[1]
        parts = []
        assert step.groups is not None and step.chunk_masks is not None
        for g, mask in zip(step.groups, step.chunk_masks, strict=True):
            chunks = query[g.offset : g.offset + g.count * g.length].view(g.count, g.length, heads, dim)
            read = slice(g.slot, g.slot + g.count), slice(None), slice(0, g.start + g.length)
            queries = chunks.transpose(1, 2)  # (count, heads, length, dim)
            out = packed.causal_attention(queries, keys[read], values[read], repeat, scale, g.start, mask)
            parts.append(out.transpose(1, 2).reshape(g.count * g.length, heads * dim))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @staticmethod
    def supports(config: Any) -> bool:
        """Whether the family's lean step computes what this configuration asks."""
        raise NotImplementedError

    @staticmethod
    def layer_modules(model: Any) -> list[Any]:
        raise NotImplementedError

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, index: int, hidden: torch.Tensor, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LeanLlama(LeanDecoder):
    """Llama, and the models built like it: Qwen2 (biases on q, k and v) and Qwen3 (q and k
    normalized per head before RoPE), where every layer attends to the whole sequence."""

    @staticmethod
    def supports(config: Any) -> bool:
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        layer_types = getattr(config, "layer_types", None) or []
        return (config.hidden_act == "silu" and getattr(config, "pretraining_tp", 1) == 1
                and rope.get("rope_type", rope.get("type", "default")) in STATIC_ROPE
                and not getattr(config, "use_sliding_window", False)
                and all(kind == "full_attention" for kind in layer_types))

    ROLES = {"qkv": (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj")),
             "out": (("self_attn", "o_proj"),), "gate_up": (("mlp", "gate_proj"), ("mlp", "up_proj")),
             "down": (("mlp", "down_proj"),)}

    @staticmethod
    def layer_modules(model: Any) -> list[Any]:
        return list(model.model.layers)

    def __init__(self, model: Any, cache: SlotCache, threads: HostThreads | None,
                 packed: bool | None) -> None:
        super().__init__(model, cache, threads, packed)
        base = model.model
        self.layers = [_LlamaWeights(layer) for layer in base.layers]
        self.embeddings = base.embed_tokens.weight
        self.norm = _rms_norm(base.norm.weight, float(base.norm.variance_epsilon))
        dim = self.layers[0].dim
        positions = torch.arange(cache.max_len)[None]
        cos, sin = base.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)  # as the model's own pass
        self.half = half = dim // 2
        self.cos = cos[0, :, None].contiguous()  # (max_len, 1, dim): a step's rows (rows, 1, dim)
        # rotate_half(x) * sin == roll(x, half) * sin with its first half negated
        self.sin = torch.cat([-sin[0, :, None, :half], sin[0, :, None, half:]], -1).contiguous()

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return functional.embedding(ids, self.embeddings)

    def _at_positions(self, positions: torch.Tensor) -> None:
        self.step_cos = self.cos.index_select(0, positions)  # (rows, 1, dim)
        self.step_sin = self.sin.index_select(0, positions)

    def layer(self, index: int, hidden: torch.Tensor, step: Step) -> torch.Tensor:
        # ~22 torch calls: on the CPU a few rows' layer is bound by calls, not arithmetic
        w = self.layers[index]
        qkv = w.qkv(w.norm1(hidden)).view(hidden.shape[0], -1, w.dim)
        qk, value = qkv.split_with_sizes(w.qk_and_v, 1)
        if w.qk_norm is not None:  # Qwen3's q_norm and k_norm, as one norm over every head
            qk = functional.rms_norm(qk, (w.dim,), None, w.qk_eps) * w.qk_norm
        rotated = torch.addcmul(qk * self.step_cos, qk.roll(self.half, -1), self.step_sin)
        query, key = rotated.split_with_sizes(w.q_and_k, 1)
        hidden = w.out(self.attend(index, query, key, value, step, w.scale), hidden)
        gate, up = w.gate_up(w.norm2(hidden)).chunk(2, -1)
        return w.down(functional.silu(gate) * up, hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)


class _LlamaWeights:
    """One Llama decoder layer's products (q/k/v and gate/up side by side) and norms."""

    def __init__(self, layer: Any) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.dim, self.scale = attention.head_dim, float(attention.scaling)
        self.heads = attention.q_proj.out_features // self.dim
        self.kv_heads = attention.k_proj.out_features // self.dim
        self.qk_and_v = [self.heads + self.kv_heads, self.kv_heads]  # qkv's heads split
        self.q_and_k = [self.heads, self.kv_heads]
        self.qkv = product_of([attention.q_proj, attention.k_proj, attention.v_proj])
        self.gate_up = product_of([mlp.gate_proj, mlp.up_proj])
        self.out = plus_product_of(attention.o_proj)  # the residual added in the product's call
        self.down = plus_product_of(mlp.down_proj)
        self.qk_norm, self.qk_eps = _qk_norm(attention, self.heads, self.kv_heads)
        first, second = layer.input_layernorm, layer.post_attention_layernorm
        self.norm1 = _rms_norm(first.weight, float(first.variance_epsilon))
        self.norm2 = _rms_norm(second.weight, float(second.variance_epsilon))


def _qk_norm(attention: Any, heads: int, kv_heads: int) -> tuple[torch.Tensor | None, float]:
    """Qwen3's per-head norms of q and k as one weight for the rows of (q heads, k heads), and
    their epsilon (both are the configuration's ``rms_norm_eps``); None where there are none."""
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    if q_norm is None or k_norm is None:
        return None, 0.0
    weight = torch.cat([q_norm.weight.expand(heads, -1), k_norm.weight.expand(kv_heads, -1)])
    return weight.detach(), float(q_norm.variance_epsilon)


class LeanGPT2(LeanDecoder):
    @staticmethod
    def supports(config: Any) -> bool:
        return (config.activation_function in GPT2_GELU and not config.add_cross_attention
                and not config.reorder_and_upcast_attn)

    ROLES = {"qkv": (("attn", "c_attn"),), "out": (("attn", "c_proj"),), "up": (("mlp", "c_fc"),),
             "down": (("mlp", "c_proj"),)}

    @staticmethod
    def layer_modules(model: Any) -> list[Any]:
        return list(model.transformer.h)

    def __init__(self, model: Any, cache: SlotCache, threads: HostThreads | None,
                 packed: bool | None) -> None:
        super().__init__(model, cache, threads, packed)
        base = model.transformer
        self.blocks = [_GPT2Weights(block) for block in base.h]
        self.tokens, self.places = base.wte.weight, base.wpe.weight
        self.ln_f = base.ln_f
        self.gelu = GPT2_GELU[model.config.activation_function]

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return functional.embedding(ids, self.tokens) + functional.embedding(positions, self.places)

    def layer(self, index: int, hidden: torch.Tensor, step: Step) -> torch.Tensor:
        w = self.blocks[index]
        rows, width = hidden.shape
        normed = functional.layer_norm(hidden, (width,), w.norm1, w.norm1_bias, w.eps1)
        qkv = w.qkv(normed).view(rows, 3, -1, w.dim)
        attended = self.attend(index, qkv[:, 0], qkv[:, 1], qkv[:, 2], step, w.scale)
        hidden = w.out(attended, hidden)
        normed = functional.layer_norm(hidden, (width,), w.norm2, w.norm2_bias, w.eps2)
        inner = functional.gelu(w.up(normed), approximate=self.gelu)
        return w.down(inner, hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        ln_f = self.ln_f
        return functional.layer_norm(hidden, (hidden.shape[1],), ln_f.weight, ln_f.bias, ln_f.eps)


class _GPT2Weights:
    """One GPT-2 block's products and norms as plain attributes (a module's cost ~0.2 us per
    look-up, 25 a layer)."""

    def __init__(self, block: Any) -> None:
        attention, mlp = block.attn, block.mlp
        self.dim, self.scale = attention.head_dim, float(attention.scaling)
        self.norm1, self.norm1_bias, self.eps1 = block.ln_1.weight, block.ln_1.bias, float(block.ln_1.eps)
        self.norm2, self.norm2_bias, self.eps2 = block.ln_2.weight, block.ln_2.bias, float(block.ln_2.eps)
        self.qkv, self.out = product_of([attention.c_attn]), plus_product_of(attention.c_proj)
        self.up, self.down = product_of([mlp.c_fc]), plus_product_of(mlp.c_proj)


FAMILIES: dict[str, type[LeanDecoder]] = {"LlamaForCausalLM": LeanLlama, "Qwen2ForCausalLM": LeanLlama,
                                          "Qwen3ForCausalLM": LeanLlama, "GPT2LMHeadModel": LeanGPT2}
