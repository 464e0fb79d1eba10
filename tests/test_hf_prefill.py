"""The HF backend's prefill: prompt chunks packed without padding beside decode rows, logits only
where they are read. Checked against transformers' own greedy tokens and log-probs, on CPU."""

from __future__ import annotations

import os
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.base.backend import StepInput  # noqa: E402
from lmql_hf.backend import HFBackend  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402

pytestmark = pytest.mark.hf
BIG_VOCAB = 150_000


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return str(bundled_path("lmql-tiny"))


@pytest.fixture(scope="module")
def tiny_reference(tiny_path: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_path).eval()


@pytest.fixture(scope="module")
def big_vocab_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Qwen3-shaped model (grouped-query attention, RoPE) with a 150k vocabulary and a tiny
    hidden size: its logits are large next to everything else it computes."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=BIG_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=0, bos_token_id=0)
    path = tmp_path_factory.mktemp("qwen3-big-vocab")
    Qwen3ForCausalLM(config).save_pretrained(path)
    return str(path)


def prompts(count: int, lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (lengths[i % len(lengths)],), generator=generator).tolist()
            for i in range(count)]


def greedy_with_transformers(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def greedy_in_steps(backend: HFBackend, prompts: list[list[int]], arrivals: list[int], chunk: int,
                    new_tokens: int) -> list[list[int]]:
    """Greedy decoding as the engine schedules it: sequence i joins at step ``arrivals[i]`` and
    feeds its prompt ``chunk`` tokens a step, while the others decode, in the same steps."""
    fed = [0] * len(prompts)
    generated: list[list[int]] = [[] for _ in prompts]
    step = 0
    while any(len(g) < new_tokens for g in generated):
        batch, rows = [], []
        for i, prompt in enumerate(prompts):
            if step < arrivals[i] or len(generated[i]) == new_tokens:
                continue
            tokens = prompt[fed[i] : fed[i] + chunk] if fed[i] < len(prompt) else generated[i][-1:]
            fed[i] += len(tokens)
            batch.append(StepInput(i + 1, tokens))
            rows.append(i)
        output = backend.forward(batch)
        for row, i in enumerate(rows):
            if fed[i] >= len(prompts[i]):
                logits = output.last_logits[row].clone()
                logits[backend.eos_token_id] = float("-inf")  # as min_new_tokens in the reference
                generated[i].append(int(logits.argmax()))
                fed[i] = len(prompts[i])
        step += 1
    backend.release_all([i + 1 for i in range(len(prompts))])
    return generated


def test_prompts_joining_running_streams_decode_as_transformers_does(tiny_path: str, tiny_reference: Any) -> None:
    backend = HFBackend(tiny_path)
    assert backend.packs
    batch = prompts(6, [7, 150, 33, 220, 1, 90], backend.vocab_size, seed=1)
    got = greedy_in_steps(backend, batch, arrivals=[0, 2, 2, 3, 5, 6], chunk=64, new_tokens=8)
    assert got == [greedy_with_transformers(tiny_reference, p, 8) for p in batch]


def test_steps_split_into_parts_and_padded_fallback_agree_with_transformers(tiny_path: str,
                                                                            tiny_reference: Any) -> None:
    batch = prompts(4, [40, 130, 9, 75], 2048, seed=2)
    expected = [greedy_with_transformers(tiny_reference, p, 5) for p in batch]
    parted = HFBackend(tiny_path, prefill_tokens=50)  # a step's prompt tokens in passes of <= 50
    assert greedy_in_steps(parted, batch, arrivals=[0, 1, 1, 2], chunk=200, new_tokens=5) == expected
    padded = HFBackend(tiny_path, attn_implementation="eager")  # cannot pack: every row padded
    assert not padded.packs
    assert greedy_in_steps(padded, batch, arrivals=[0, 1, 1, 2], chunk=200, new_tokens=5) == expected


def test_long_scores_equal_transformers_log_probs(tiny_reference: Any) -> None:
    llm = lmql.model("local:lmql-tiny")
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "wise", "old", "men", "said", "that", "love", "is", "all", "we", "need", "in", "time"]
    generator = torch.Generator().manual_seed(3)
    prompt = " ".join(words[int(i)] for i in torch.randint(0, len(words), (220,), generator=generator))
    values = [" and then the cat went home to sleep in the sun", " mat", " of all the wise men in time"]
    prompt_ids = llm.encode_prompt(prompt)
    assert len(prompt_ids) > 200
    for _ in range(2):  # the second time, the cached prompt serves as a prefix
        result = llm.score_sync(prompt, values)
        for value, scores in zip(values, result.token_scores, strict=True):
            value_ids = llm.tokenizer.encode(value, add_special_tokens=False)
            with torch.no_grad():
                logits = tiny_reference(torch.tensor([prompt_ids + value_ids])).logits[0]
            logprobs = torch.log_softmax(logits, -1)
            expected = [logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(value_ids)]
            assert scores == pytest.approx(expected, abs=1e-4)
    assert llm.model_info_sync()["model_info"]["kv_cache"]["reused_prefix_tokens"] >= len(prompt_ids) - 1


@pytest.mark.parametrize("lean", [True, False])
def test_big_vocabulary_prefill_and_score_compute_only_the_logits_read(big_vocab_path: str, lean: bool) -> None:
    """Only the positions whose logits are read reach the output head: transformers' module, or
    the lean step's (which prompt passes use too where it is on)."""
    from transformers import AutoModelForCausalLM

    backend = HFBackend(big_vocab_path, lean_decode=lean)
    assert backend.packs and (backend.lean is not None) == lean
    seen: list[tuple[int, ...]] = []  # (positions, hidden) of each call of the head
    head = backend.model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape[-2:])))
    if backend.lean is not None:
        lean_head = backend.lean.head_logits
        backend.lean.head_logits = lambda hidden: seen.append(tuple(hidden.shape)) or lean_head(hidden)
    long_prompt, other = prompts(2, [1500, 700], BIG_VOCAB, seed=5)
    try:
        out = backend.forward([StepInput(1, long_prompt), StepInput(2, other)])
        assert seen == [(2, 32)]  # two prompts: one position each reaches the head
        scored = 20
        out_score = backend.forward([StepInput(3, other + long_prompt[:scored], all_logits=True,
                                               logits_from=len(other) - 1)])
        assert seen[-1] == (scored + 1, 32)
    finally:
        hook.remove()
    reference = AutoModelForCausalLM.from_pretrained(big_vocab_path).eval()
    with torch.no_grad():
        expected_last = reference(torch.tensor([long_prompt])).logits[0, -1]
        expected_scored = reference(torch.tensor([other + long_prompt[:scored]])).logits[0, len(other) - 1:]
    assert torch.allclose(out.last_logits[0], expected_last, atol=1e-4)
    assert out_score.all_logits[3].shape == (scored + 1, BIG_VOCAB)
    assert torch.allclose(out_score.all_logits[3], expected_scored, atol=1e-4)


def test_big_vocabulary_chunked_prompts_beside_decode_rows(big_vocab_path: str) -> None:
    """Grouped-query attention over continued chunks (positions after the slot's first)."""
    from transformers import AutoModelForCausalLM

    backend = HFBackend(big_vocab_path)
    reference = AutoModelForCausalLM.from_pretrained(big_vocab_path).eval()
    batch = prompts(3, [300, 5, 520], BIG_VOCAB, seed=6)
    got = greedy_in_steps(backend, batch, arrivals=[0, 1, 1], chunk=128, new_tokens=4)
    assert got == [greedy_with_transformers(reference, p, 4) for p in batch]



def test_warm_up_leaves_nothing_behind_and_decoding_unchanged(tiny_path: str, tiny_reference: Any) -> None:
    backend = HFBackend(tiny_path)  # the CPU warms up too, by default
    assert backend.warm_up_seconds is not None
    assert backend.table.active == 0
    assert all(not slot.tokens for slot in backend.table.slots)  # no made-up prefix is reused
    batch = prompts(3, [20, 64, 5], backend.vocab_size, seed=7)
    got = greedy_in_steps(backend, batch, arrivals=[0, 1, 1], chunk=32, new_tokens=4)
    assert got == [greedy_with_transformers(tiny_reference, p, 4) for p in batch]


def test_a_large_models_steps_of_many_tokens_take_every_core_and_tokens_stay_transformers(
        tmp_path: Any) -> None:
    """On the CPU a model of ALL_CORES_FROM_WEIGHTS weights or more runs steps of at least
    ALL_CORES_FROM_TOKENS tokens on every core, smaller steps leave a core to the event loop;
    a lean decode step runs its layers on the latter and its head on the former; the tokens
    are transformers' either way."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmql_hf.cpu.threads import ALL_CORES_FROM_TOKENS, ALL_CORES_FROM_WEIGHTS, weights_per_token

    cores = os.cpu_count() or 1
    if cores < 2 or "OMP_NUM_THREADS" in os.environ:
        pytest.skip("one core, or threads fixed by OMP_NUM_THREADS")
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=128, n_head=4, vocab_size=32_000)).eval()
    assert weights_per_token(reference) >= ALL_CORES_FROM_WEIGHTS
    reference.save_pretrained(tmp_path)
    backend = HFBackend(str(tmp_path))
    batch = prompts(2, [ALL_CORES_FROM_TOKENS // 2], backend.vocab_size, seed=3)
    first = backend.forward([StepInput(i, p) for i, p in enumerate(batch)]).last_logits.argmax(-1).tolist()
    assert torch.get_num_threads() == cores
    with backend.threads.cores(every=False):  # a lean decode step's layers, however many rows
        assert torch.get_num_threads() == cores - 1
    assert torch.get_num_threads() == cores
    second = backend.forward([StepInput(i, [t]) for i, t in enumerate(first)]).last_logits.argmax(-1).tolist()
    assert torch.get_num_threads() == cores - 1
    assert backend.lean is not None  # its output head, in a step of few rows, on every core:
    with backend.threads.cores(every=True):
        assert torch.get_num_threads() == cores
    assert torch.get_num_threads() == cores - 1
    assert [list(pair) for pair in zip(first, second, strict=True)] == [
        greedy_with_transformers(reference, p, 2) for p in batch]


def test_warm_ups_of_models_with_different_vocabularies_in_one_process(tiny_path: str, small_gpt2: str) -> None:
    """The warm-up's sampling requests are new for each model (the sampler keeps a bias sized for
    one vocabulary on them: a second model once failed to load)."""
    for path in (tiny_path, small_gpt2, tiny_path):
        backend = HFBackend(path, warm_up=True)
        assert backend.table.active == 0
