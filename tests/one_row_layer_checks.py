"""Checks of the fused one-token decoder layers (lmql_hf.cuda.one_row_layers) and the kernel options
they use (a norm before the product, a residual after it, SwiGLU, RoPE), run on the CPU by
Triton's interpreter against float64 references and transformers' own modules.

Started by test_row_kernel.py with TRITON_INTERPRET=1 (pytest does not collect this file by itself).
"""

from __future__ import annotations

import copy
import os
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.nn import functional

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_row_kernel.py"


@pytest.fixture(scope="module")
def kernel() -> ModuleType:
    from lmql_hf.kernels import gemv_kernel

    return gemv_kernel


def _normed(x: torch.Tensor, kind: str, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    if kind == "layer":
        return functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize(("n", "k", "config", "kind"), [
    (96, 64, None, "rms"),  # the whole row in one block, as fused norms take it by default
    (96, 64, None, "layer"),
    (37, 100, (4, 128, 2), "rms"),  # K not a power of two: the norm's sums skip the masked lanes
    (37, 100, (4, 128, 2), "layer"),
    (37, 100, (2, 32, 2), "rms"),  # RMSNorm over several blocks: scaled once all are summed
])
@pytest.mark.parametrize("activation", [None, "gelu_tanh", "silu_mul"])
def test_norm_product_and_residual_match_float64(kernel: ModuleType, n: int, k: int, config: tuple | None,
                                                 kind: str, activation: str | None) -> None:
    torch.manual_seed(n + k)
    rows = 2 * n if activation == "silu_mul" else n
    x = torch.randn(1, k) * 3 + 1  # off-centre: LayerNorm's mean matters
    weight, bias = torch.randn(rows, k) / k ** 0.5, torch.randn(rows)
    norm_weight, norm_bias = torch.rand(k) + 0.5, (torch.randn(k) if kind == "layer" else None)
    residual = torch.randn(1, n)
    norm = kernel.RowNorm(kind, norm_weight, norm_bias, 1e-5)
    out = kernel.row_times_weights(x, weight, bias, activation, config, norm=norm, residual=residual)
    d = torch.float64
    product = functional.linear(_normed(x.to(d), kind, norm_weight.to(d), None if norm_bias is None else norm_bias.to(d),
                                        1e-5), weight.to(d), bias.to(d))
    if activation == "gelu_tanh":
        product = functional.gelu(product, approximate="tanh")
    elif activation == "silu_mul":
        product = functional.silu(product[:, :n]) * product[:, n:]
    want = product + residual.to(d)
    assert out.shape == (1, n)
    assert float((out.double() - want).norm() / want.norm()) < 1e-6


def test_a_fused_layer_norm_needs_the_whole_row_in_one_block(kernel: ModuleType) -> None:
    norm = kernel.RowNorm("layer", torch.ones(256), torch.zeros(256), 1e-6)
    with pytest.raises(AssertionError):
        kernel.row_times_weights(torch.randn(1, 256), torch.randn(8, 256), None, None, (2, 128, 2), norm=norm)


@pytest.mark.parametrize("dim", [64, 12])  # 12: half a head is not a power of two (masked lanes)
def test_rope_matches_transformers(kernel: ModuleType, dim: int) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(dim)
    heads, kv_heads = 4, 2
    qkv = torch.randn(1, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(1, 1, dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q = qkv[:, : heads * dim].view(1, 1, heads, dim).transpose(1, 2)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(1, 1, kv_heads, dim).transpose(1, 2)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    out = kernel.rotate_heads(qkv, heads + kv_heads, cos, sin)
    assert torch.allclose(out[:, : heads * dim], want_q.transpose(1, 2).reshape(1, -1), atol=1e-6)
    assert torch.allclose(out[:, heads * dim :], want_k.transpose(1, 2).reshape(1, -1), atol=1e-6)


@pytest.mark.parametrize("dim", [16, 12])  # 12: masked lanes, which the sum of squares must skip
def test_rope_after_per_head_norms_matches_float64(kernel: ModuleType, dim: int) -> None:
    """Qwen3's q_norm and k_norm (RMSNorm over each head, one weight for q's heads, another for
    k's) and then RoPE, in one kernel: as transformers' own modules compute them in float64."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

    torch.manual_seed(dim)
    heads, kv_heads, eps = 4, 2, 1e-6
    qkv = torch.randn(1, (heads + 2 * kv_heads) * dim) * torch.rand(heads + 2 * kv_heads).repeat_interleave(dim) * 4
    angles = torch.rand(1, 1, dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q_norm, k_norm = Qwen3RMSNorm(dim, eps).double(), Qwen3RMSNorm(dim, eps).double()
    with torch.no_grad():
        q_norm.weight.uniform_(0.5, 1.5), k_norm.weight.uniform_(-1.5, -0.5)
    norms = kernel.HeadNorms(q_norm.weight.detach().float(), k_norm.weight.detach().float(), heads, eps)
    out = kernel.rotate_heads(qkv, heads + kv_heads, cos, sin, norms).double()
    d = qkv.double()
    with torch.no_grad():
        q = q_norm(d[:, : heads * dim].view(1, 1, heads, dim)).transpose(1, 2)
        k = k_norm(d[:, heads * dim : (heads + kv_heads) * dim].view(1, 1, kv_heads, dim)).transpose(1, 2)
        want_q, want_k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    want = torch.cat([want_q.transpose(1, 2).reshape(1, -1), want_k.transpose(1, 2).reshape(1, -1)], 1)
    assert float((out - want).norm() / want.norm()) < 1e-6


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights off one and biases off zero, so a stand-in that dropped one would show."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
            elif name.endswith("bias"):
                parameter.normal_(std=0.1)
    return model.eval()


def _decode_logits(model: torch.nn.Module, prompt: torch.Tensor, then: list[int]) -> list[torch.Tensor]:
    """Logits of a prompt's pass and of each following token, one at a time over the model's cache."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        logits, cache = [out.logits[0, -1]], out.past_key_values
        for token in then:
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
            cache = out.past_key_values
    return logits


def _decode_rows_logits(model: torch.nn.Module, prompts: list[list[int]], then: list[int]) -> list[torch.Tensor]:
    """As ``_decode_logits`` for several rows at once, prompts of different lengths left-padded:
    each decode step is one token for every row, each at its own position."""
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        for token in then:
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], -1)
            positions = positions[:, -1:] + 1
            out = model(torch.full((len(prompts), 1), token), attention_mask=mask, position_ids=positions,
                        past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            cache = out.past_key_values
    return logits


def _assert_fused_decode_matches(model: torch.nn.Module, wrapper: type, then: tuple[int, ...] = (13, 2, 40),
                                 many_rows: bool = False) -> None:
    """One row's decode steps through the fused layers give the untouched model's logits; with
    ``many_rows``, so do three rows' at once, each at its own position."""
    from lmql_hf.cuda import fused

    original = copy.deepcopy(model)
    fused.fuse(model)
    layers = [m for m in model.modules() if isinstance(m, wrapper)]
    assert len(layers) == 2
    prompt = torch.tensor([[5, 7, 9, 11]])
    want, got = _decode_logits(original, prompt, list(then)), _decode_logits(model, prompt, list(then))
    if many_rows:
        prompts = [[5, 7, 9, 11], [3, 1], [8, 6, 4, 2, 10, 12]]
        want += _decode_rows_logits(original, prompts, list(then))
        got += _decode_rows_logits(model, prompts, list(then))
        taken = []  # the fused many-row path, not the original layer, ran those steps
        layers[0].many_rows = _counted(layers[0].many_rows, taken)
        _decode_rows_logits(model, prompts, list(then))
        assert len(taken) == len(then)
    for a, b in zip(want, got, strict=True):
        assert torch.allclose(a, b, atol=2e-5), float((a - b).abs().max())


def _counted(method: Any, calls: list[int]) -> Any:
    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return method(*args, **kwargs)
    return counting


@pytest.mark.parametrize("attention_bias", [False, True])
def test_a_fused_llama_decodes_as_transformers_does(attention_bias: bool) -> None:
    """Each one-token step through the fused layers (one prompt pass first, through the
    original ones): logits as the untouched model's, over a grouped-query cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmql_hf.cuda import one_row_layers

    torch.manual_seed(1)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=128, attention_bias=attention_bias,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    model = _perturbed(LlamaForCausalLM(config))
    _assert_fused_decode_matches(model, one_row_layers.OneRowLlamaLayer, many_rows=True)
    attention = model.model.layers[0].layer.self_attn
    assert attention.k_proj.weight.data_ptr() == attention.q_proj.weight.data_ptr() + 64 * 64 * 4  # views, no copy


def _small_qwen(family: str) -> torch.nn.Module:
    """Qwen2 (biases on q, k and v) or Qwen3 (per-head norms of q and k, heads wider than
    hidden / heads as in Qwen3-0.6B, a tied head): two layers, grouped-query."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(4)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=48, vocab_size=64, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    if family == "qwen2":
        return _perturbed(Qwen2ForCausalLM(Qwen2Config(**shape)))
    return _perturbed(Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=16, tie_word_embeddings=True)))


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_a_fused_qwen_decodes_as_transformers_does(family: str) -> None:
    from lmql_hf.cuda import one_row_layers

    model = _small_qwen(family)
    _assert_fused_decode_matches(model, one_row_layers.OneRowLlamaLayer, then=(13, 2), many_rows=True)
    assert (model.model.layers[0].head_norms is not None) == (family == "qwen3")
    if family == "qwen3":
        assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, not copied


def test_a_qwen3_layer_whose_head_norms_differ_in_epsilon_stays_as_it_is() -> None:
    """The fused RoPE kernel takes one epsilon for q's and k's norms: a layer with two stays
    transformers' own (the other is fused)."""
    from lmql_hf.cuda import fused, one_row_layers

    model = _small_qwen("qwen3")
    model.model.layers[0].self_attn.k_norm.variance_epsilon = 1e-3
    fused.fuse(model)
    kinds = [type(layer) for layer in model.model.layers]
    assert kinds == [type(model.model.layers[0]), one_row_layers.OneRowLlamaLayer]
    assert type(model.model.layers[0]).__name__ == "Qwen3DecoderLayer"


def test_a_fused_gpt2_decodes_as_transformers_does(small_gpt2: str) -> None:
    from transformers import GPT2LMHeadModel

    from lmql_hf.cuda import one_row_layers

    torch.manual_seed(2)
    model = _perturbed(GPT2LMHeadModel.from_pretrained(small_gpt2))
    _assert_fused_decode_matches(model, one_row_layers.OneRowGPT2Block, many_rows=True)


@pytest.mark.parametrize(("rows", "tokens"), [(3, 1), (1, 5)])  # decode rows; a packed prompt chunk
def test_cache_writes_land_where_indexing_puts_them(rows: int, tokens: int) -> None:
    from lmql_hf.kernels.cache_kernels import write_tokens

    torch.manual_seed(rows)
    heads, dim = 2, 12
    keys, values = torch.randn(6, heads, 16, dim), torch.randn(6, heads, 16, dim)
    want_keys, want_values = keys.clone(), values.clone()
    # as the decode graphs hold them: views of a (3, rows) tensor, not contiguous
    inputs = torch.stack([torch.tensor([1, 4, 2][:rows]), torch.tensor([3, 9, 0][:rows])])
    slots, positions = inputs[0:1].T.expand(rows, tokens), inputs[1:2].T + torch.arange(tokens)
    slots = slots.contiguous() if tokens > 1 else slots
    new = torch.randn(rows, tokens, 2 * heads, dim).transpose(1, 2)  # (rows, heads, tokens, dim) views
    key_states, value_states = new[:, :heads], new[:, heads:].double()  # values cast on the way
    want_keys[slots, :, positions] = key_states.transpose(1, 2)
    want_values[slots, :, positions] = value_states.transpose(1, 2).float()
    write_tokens(keys, values, key_states, value_states, slots, positions)
    assert torch.equal(keys, want_keys) and torch.equal(values, want_values)


def test_slot_moves_move_what_indexing_moves() -> None:
    """Through SlotCache's copy_slot / swap_slots, as the slot table calls them: keys and values
    of every layer, the first positions of each slot only; copies held back until ``flush``,
    one after the other where they touch the same slots."""
    from lmql_hf.cache.slot_cache import SlotCache

    torch.manual_seed(0)
    cache = SlotCache(layers=3, slots=9, kv_heads=2, max_len=40, head_dim=12, dtype=torch.float32,
                      devices=[torch.device("cpu")] * 3)
    for group in cache.groups:
        group.copy_(torch.randn_like(group))
    want = [group.clone() for group in cache.groups]
    assert cache.use_kernels()

    def copy(source: int, target: int, length: int) -> None:
        cache.copy_slot(source, target, length)
        for group in want:
            group[:, target, :, :length] = group[:, source, :, :length]

    # lengths spanning several of the kernel's blocks, and fewer; the third reads what the first wrote
    copy(4, 1, 33), copy(5, 2, 7), copy(1, 6, 40)
    cache.flush()
    assert all(torch.equal(a, b) for a, b in zip(cache.groups, want, strict=True))
    copy(3, 0, 12)  # held back, then launched before the swap
    pairs, length = [(0, 5), (2, 3), (1, 7)], 21
    cache.swap_slots(pairs, length)
    for group in want:
        for a, b in pairs:
            held = group[:, a, :, :length].clone()
            group[:, a, :, :length] = group[:, b, :, :length]
            group[:, b, :, :length] = held
    assert all(torch.equal(a, b) for a, b in zip(cache.groups, want, strict=True))


@pytest.mark.parametrize("model", ["llama", "gpt2", "qwen3"])
def test_the_backend_decodes_through_the_fused_layers_as_without(model: str, small_gpt2: str,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The HF backend on its slot cache (kernel writes), one stream then two: each step's
    logits with fused modules as without them."""
    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend
    from lmql_hf.cuda import one_row_layers

    paths = {"gpt2": lambda: small_gpt2, "llama": lambda: _saved_llama(tmp_path_factory),
             "qwen3": lambda: _saved_qwen3(tmp_path_factory)}
    path = paths[model]()
    fused, plain = (HFBackend(path, fuse_kernels=on, max_seq_len=64, max_batch=2, warm_up=False)
                    for on in (True, False))
    assert fused.cache.write_tokens is not None and plain.cache.write_tokens is None
    assert any(isinstance(m, one_row_layers.OneRowLayer) for m in fused.model.modules())
    steps = [[StepInput(0, [5, 7, 9])], [StepInput(0, [11])], [StepInput(0, [3])],
             [StepInput(1, [8, 2]), StepInput(0, [4])], [StepInput(0, [6]), StepInput(1, [1])]]
    left: list[bool] = []  # decode steps whose keys the attention kernel wrote (no write kernel first)
    in_attention = fused.cache.update_in_attention

    def noted(*args: Any) -> Any:
        views = in_attention(*args)
        left.append(views is not None)
        return views

    fused.cache.update_in_attention = noted
    for step in steps:
        want, got = plain.forward(step).last_logits, fused.forward(step).last_logits
        assert torch.allclose(want, got, atol=2e-5), float((want - got).abs().max())
    assert left and all(left)


def _saved_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=128, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2)
    path = tmp_path_factory.mktemp("llama")
    _perturbed(LlamaForCausalLM(config)).save_pretrained(path)
    return str(path)


def _saved_qwen3(tmp_path_factory: pytest.TempPathFactory) -> str:
    model = _small_qwen("qwen3")
    model.config.update({"max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2})
    path = tmp_path_factory.mktemp("qwen3")
    model.save_pretrained(path)
    return str(path)


def test_a_prefix_moved_out_of_the_way_serves_a_later_prompt(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With the cache kernels, admitting a prompt moves the cached prefix in its slot elsewhere
    (the copy held back until the pass): a later prompt extending that prefix reuses it, and
    every last-token logit equals transformers' own forward over the whole prompt."""
    from transformers import AutoModelForCausalLM

    from lmql_core.base.backend import StepInput
    from lmql_hf.backend import HFBackend

    path = _saved_llama(tmp_path_factory)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    backend = HFBackend(path, fuse_kernels=True, max_seq_len=64, max_batch=4, warm_up=False)
    assert backend.cache.move_slots is not None
    first, other, extended = [5, 7, 9, 11, 13], [8, 2, 4], [5, 7, 9, 11, 13, 17, 19]
    for seq_id, prompt in [(0, first), (1, other), (2, extended)]:
        got = backend.forward([StepInput(seq_id, prompt)]).last_logits[0]
        with torch.no_grad():
            want = reference(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(got, want, atol=2e-5), (seq_id, float((got - want).abs().max()))
        backend.release_all([seq_id])  # slot 0 keeps the prompt as a cached prefix
    assert backend.table.reused_tokens == len(first)
