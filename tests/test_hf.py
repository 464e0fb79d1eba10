"""The HF backend with the bundled lmql-tiny model, on CPU: served and in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.loading.tokenizer import IncrementalDecoder  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import RawClient, Server, server_metric  # noqa: E402

pytestmark = pytest.mark.hf
PROMPTS = ["Once upon a time", "The cat sat on the", "A wise man once said", "Q: What is love?\nA:"]


@pytest.fixture(scope="module")
def local() -> lmql.LLM:
    return lmql.model("local:lmql-tiny")


@pytest.fixture(scope="module")
def reference() -> tuple:
    from transformers import AutoModelForCausalLM

    path = bundled_path("lmql-tiny")
    return AutoModelForCausalLM.from_pretrained(path).eval(), lmql.model("local:lmql-tiny").tokenizer


def test_greedy_served_equals_in_process(tiny_server: Server, local: lmql.LLM) -> None:
    served = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    for prompt in PROMPTS:
        text = served.generate_sync(prompt, max_tokens=24)
        assert text == local.generate_sync(prompt, max_tokens=24)
        assert len(text) > 10


def test_scores_equal_a_direct_forward_pass(local: lmql.LLM, reference: tuple) -> None:
    model, tokenizer = reference
    prompt, value = "The cat sat on the", " mat and looked out of the window"
    result = local.score_sync(prompt, [value])
    prompt_ids = local.encode_prompt(prompt)
    value_ids = tokenizer.encode(value, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + value_ids])).logits[0]
    logprobs = torch.log_softmax(logits, -1)
    expected = [logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(value_ids)]
    assert result.token_scores[0] == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def budget_server() -> Iterator[Server]:
    """lmql-tiny with a token budget of 48 a step (its counters read as differences: shared)."""
    server = Server("lmql-tiny", "--token_budget", "48")
    yield server
    assert server.stop() == 0, server.output()


def steps_ahead(server: Server) -> float:
    return server_metric(server, "lmql_engine_steps_ahead", "lmql-tiny")


def test_scores_run_in_steps_launched_ahead_and_equal_a_direct_forward_pass(reference: tuple,
                                                                             budget_server: Server) -> None:
    """A token budget of one SCORE request a step: each step after the first is queued while the
    one before it runs (nothing it needs comes from there), and every value's log-probs still equal
    transformers' forward over prompt and value."""
    model, tokenizer = reference
    ahead_before = steps_ahead(budget_server)
    llm = lmql.model("lmql-tiny", endpoint=budget_server.endpoint)
    prompt = "Q: What is the best thing about a cat that sat on the mat?\nA:"
    values = [" It is soft and warm", " nothing", " the mat, and the sun on the window", " love"]
    result = llm.score_sync(prompt, values)
    prompt_ids = llm.encode_prompt(prompt)
    for value, scores in zip(values, result.token_scores, strict=True):
        value_ids = tokenizer.encode(value, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + value_ids])).logits[0]
        logprobs = torch.log_softmax(logits, -1)
        expected = [logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(value_ids)]
        assert scores == pytest.approx(expected, abs=1e-4)
    assert steps_ahead(budget_server) - ahead_before >= len(values) - 1


def test_long_prompts_and_scores_together_in_steps_launched_ahead(reference: tuple, budget_server: Server) -> None:
    """Prompts of ~100 tokens in chunks of a 48-token budget (chunks that complete no prompt sample
    nothing, so the next step is launched ahead) beside SCORE requests, all sent at once: the
    greedy tokens are transformers' own, the log-probs its forward's."""
    model, tokenizer = reference
    text = "Q: What did the wise old man say to the cat that sat on the mat in the sun? A: He said"
    prompts = [tokenizer.encode(text * k, add_special_tokens=False)[:n] for k, n in ((2, 90), (3, 130), (2, 70))]
    scored = tokenizer.encode(" that love is all we need", add_special_tokens=False)

    async def together(endpoint: str) -> dict[int, list[dict]]:
        async with RawClient(endpoint) as c:
            for sid, prompt in enumerate(prompts):
                await c.send("GENERATE", {"model": "lmql-tiny", "stream_id": sid, "prompt": prompt,
                                          "max_tokens": 8, "logit_bias": {str(tokenizer.eos_token_id): -100}})
            for sid, prompt in enumerate(prompts, start=10):
                await c.send("SCORE", {"model": "lmql-tiny", "stream_id": sid, "prompt": prompt, "scored": scored})
            return await c.collect(set(range(len(prompts))) | set(range(10, 10 + len(prompts))))

    ahead_before = steps_ahead(budget_server)
    results = asyncio.run(together(budget_server.endpoint))
    ahead = steps_ahead(budget_server) - ahead_before
    for sid, prompt in enumerate(prompts):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            bias = torch.zeros(model.config.vocab_size)
            bias[tokenizer.eos_token_id] = -100
            for _ in range(8):
                ids = torch.cat([ids, (model(ids).logits[0, -1] + bias).argmax().view(1, 1)], dim=1)
            logprobs = torch.log_softmax(model(torch.tensor([prompt + scored])).logits[0], -1)
        assert [e["token"] for e in results[sid]] == ids[0, len(prompt):].tolist()
        expected = [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(scored)]
        assert [e["logprob"] for e in results[10 + sid]] == pytest.approx(expected, abs=1e-4)
    assert ahead > 0


def test_real_words_score_far_above_random_letters(local: lmql.LLM) -> None:
    result = local.score_sync("The cat sat on the", [" floor", " xqzvk"])
    real, noise = result.scores("sum")
    assert real > noise + 5
    assert result.argmax() == " floor"


async def _generate(endpoint: str, requests: dict[int, dict]) -> dict[int, list[dict]]:
    async with RawClient(endpoint) as c:
        for sid, request in requests.items():
            await c.send("GENERATE", {"model": "lmql-tiny", "stream_id": sid, **request})
        return await c.collect(set(requests))


def test_logit_bias_forces_and_bans(tiny_server: Server, local: lmql.LLM) -> None:
    prompt = local.encode_prompt("Once upon a time")
    plain = asyncio.run(_generate(tiny_server.endpoint, {1: {"prompt": prompt, "max_tokens": 6}}))[1]
    first = plain[0]["token"]
    forced_token = 42
    results = asyncio.run(_generate(tiny_server.endpoint, {
        1: {"prompt": prompt, "max_tokens": 6, "logit_bias": {str(forced_token): 100}},
        2: {"prompt": prompt, "max_tokens": 6, "logit_bias": {str(first): -100}, "top_logprobs": 5},
        3: {"prompt": prompt, "max_tokens": 6, "temperature": 5.0, "logit_bias": {str(forced_token): 100}},
    }))
    assert [e["token"] for e in results[1]] == [forced_token] * 6
    assert [e["token"] for e in results[3]] == [forced_token] * 6  # even when sampling hot
    assert all(e["logprob"] == pytest.approx(0.0, abs=1e-4) for e in results[1])
    banned = results[2]
    assert banned[0]["token"] != first
    assert str(first) not in banned[0]["top_logprobs"]


def test_top_logprobs_sorted_and_consistent(tiny_server: Server, local: lmql.LLM) -> None:
    prompt = local.encode_prompt("A wise man once said")
    results = asyncio.run(_generate(tiny_server.endpoint, {
        1: {"prompt": prompt, "max_tokens": 8, "top_logprobs": 5},
        2: {"prompt": prompt, "max_tokens": 8, "top_logprobs": 5, "temperature": 1.0},
    }))
    for sid, entries in results.items():
        for e in entries:
            top = list(e["top_logprobs"].items())
            # the chosen token first, then the 5 most likely (it is often one of them: K or K+1 keys)
            assert top[0] == (str(e["token"]), e["logprob"])
            assert len(top) in (5, 6)
            rest = [lp for _, lp in top[1:]]
            assert rest == sorted(rest, reverse=True)
            assert sum(torch.tensor([lp for _, lp in top]).exp()) <= 1.0 + 1e-5
            if sid == 1:  # greedy picks the most likely token
                assert e["logprob"] == pytest.approx(max(lp for _, lp in top))


def test_one_top_logprob_of_a_sampled_token_names_the_best_one_too(tiny_server: Server, local: lmql.LLM) -> None:
    """With ``top_logprobs: 1`` a greedy entry's list is the chosen token alone; a sampled one
    also names the most likely token where the draw picked another."""
    prompt = local.encode_prompt("Once upon a time")
    results = asyncio.run(_generate(tiny_server.endpoint, {
        1: {"prompt": prompt, "max_tokens": 24, "top_logprobs": 1},
        2: {"prompt": prompt, "max_tokens": 24, "top_logprobs": 1, "temperature": 2.0},
    }))
    assert all(list(e["top_logprobs"]) == [str(e["token"])] for e in results[1])
    for e in results[2]:
        top = e["top_logprobs"]
        assert str(e["token"]) in top and len(top) <= 2 and max(top.values()) >= e["logprob"]
    assert any(len(e["top_logprobs"]) == 2 for e in results[2])


def test_concurrent_streams_with_different_settings_share_batches(tiny_server: Server, local: lmql.LLM) -> None:
    prompts = {sid: local.encode_prompt(p) for sid, p in enumerate(PROMPTS, start=1)}
    solo = {sid: [e["token"] for e in asyncio.run(_generate(tiny_server.endpoint, {
        sid: {"prompt": p, "max_tokens": 16}}))[sid]] for sid, p in prompts.items()}
    mixed = {sid: {"prompt": p, "max_tokens": 16} for sid, p in prompts.items()}
    mixed[10] = {"prompt": prompts[1], "max_tokens": 16, "temperature": 0.9, "top_logprobs": 3,
                 "logit_bias": {"2": -100}}  # no EOS: exactly 16 tokens
    mixed[11] = {"prompt": prompts[2], "max_tokens": 5, "logit_bias": {"7": 100}}
    together = asyncio.run(_generate(tiny_server.endpoint, mixed))
    for sid in prompts:
        assert [e["token"] for e in together[sid]] == solo[sid]
    assert len(together[10]) == 16 and len(together[10][0]["top_logprobs"]) >= 3
    assert [e["token"] for e in together[11]] == [7] * 5


def test_streams_ending_together_leave_the_others_caches_intact(tiny_server: Server, local: lmql.LLM) -> None:
    """Streams 1, 3 and 5 end in the same step while 2, 4 and 6 go on: the running ones above
    the new boundary move into the freed cache slots in one exchange, and decode as if alone."""
    no_eos = {str(local.tokenizer.eos_token_id): -100}
    prompts = {sid: local.encode_prompt(PROMPTS[sid % len(PROMPTS)] + " " * sid) for sid in range(1, 7)}
    requests = {sid: {"prompt": p, "max_tokens": 4 if sid % 2 else 24, "logit_bias": no_eos}
                for sid, p in prompts.items()}
    together = asyncio.run(_generate(tiny_server.endpoint, requests))
    for sid in (2, 4, 6):
        solo = asyncio.run(_generate(tiny_server.endpoint, {sid: requests[sid]}))[sid]
        assert [e["token"] for e in together[sid]] == [e["token"] for e in solo]
    assert [len(together[sid]) for sid in range(1, 7)] == [4, 24] * 3


def test_multibyte_characters_decode_across_tokens(local: lmql.LLM) -> None:
    text = "naïve café — 日本語 ✓ 🙂"
    ids = local.tokenizer.encode(text, add_special_tokens=False)
    pieces = [local.tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # some characters really are split across tokens
    decoder = IncrementalDecoder(local.tokenizer)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_model_info_describes_the_load(tiny_server: Server) -> None:
    info = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint).model_info_sync()["model_info"]
    assert info["backend"] == "hf" and info["model_class"] == "LlamaForCausalLM"
    assert info["devices"] == ["cpu"] and info["dtype"] == "float32"
    assert info["constructor"].startswith("AutoModelForCausalLM.from_pretrained(")
    assert {"torch", "transformers"} <= set(info["versions"])


@pytest.mark.parametrize(("model", "swapped"), [("lmql-tiny", 4 * 10 + 2), ("gpt2", 2 * 2 + 1)])
def test_fused_stand_in_modules_compute_what_the_originals_did(model: str, swapped: int, small_gpt2: str) -> None:
    """On CUDA, norms, GELUs and linear layers are swapped for fused kernels; forced on here (where
    linear layers take cuBLAS's path, with GPT-2's weights transposed), every stream decodes to the
    same tokens with the same log-probabilities."""
    path = small_gpt2 if model == "gpt2" else model
    plain, fused = Server(path), Server(path, "--fuse_kernels", "True")
    try:
        info = {name: lmql.model(path, endpoint=server.endpoint).model_info_sync()["model_info"]
                for name, server in (("plain", plain), ("fused", fused))}
        # per layer: 2 norms + 7 linear + the layer (one_row_layers) / the MLP (GELU into its first
        # product) and the block, which takes its linear layers; + final norm, LM head
        assert info["fused"]["kv_cache"]["fused_modules"] == swapped
        assert info["plain"]["kv_cache"]["fused_modules"] == 0
        requests = {i: {"model": path, "prompt": prompt, "max_tokens": 16 + 8 * i, "top_logprobs": 3}
                    for i, prompt in enumerate([[1, 15, 27, 99, 3], [7], [400, 2, 2, 9]])}  # the last ends alone
        results = {name: asyncio.run(_generate(server.endpoint, requests)) for name, server in
                   (("plain", plain), ("fused", fused))}
        for sid in requests:
            want, got = results["plain"][sid], results["fused"][sid]
            assert [e["token"] for e in got] == [e["token"] for e in want]
            assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want], abs=1e-4)
    finally:
        assert plain.stop() == 0 and fused.stop() == 0


def test_growing_prompts_reuse_the_cached_prefix(tiny_server: Server, local: lmql.LLM) -> None:
    """LMQL sends a prompt, then the prompt plus what came back plus more: only the new part is
    computed, and the result equals a server that recomputes everything."""
    plain = Server("lmql-tiny", "--reuse_prefixes", "False")
    try:
        prompt = local.encode_prompt("Once upon a time")
        outputs = {}
        for name, server in (("reuse", tiny_server), ("plain", plain)):
            llm = lmql.model("lmql-tiny", endpoint=server.endpoint)
            before = llm.model_info_sync()["model_info"]["kv_cache"]["reused_prefix_tokens"]
            first = asyncio.run(_generate(server.endpoint, {1: {"prompt": prompt, "max_tokens": 8}}))[1]
            grown = prompt + [e["token"] for e in first] + local.tokenizer.encode(" and then", False)
            second = asyncio.run(_generate(server.endpoint, {1: {"prompt": grown, "max_tokens": 8,
                                                                 "top_logprobs": 3}}))[1]
            after = llm.model_info_sync()["model_info"]["kv_cache"]["reused_prefix_tokens"]
            outputs[name] = (first, second, after - before)
        assert outputs["reuse"][2] >= len(prompt) + 7  # the whole first exchange was reused
        assert outputs["plain"][2] == 0
        for a, b in zip(outputs["reuse"][1], outputs["plain"][1], strict=True):
            assert a["token"] == b["token"]
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
    finally:
        assert plain.stop() == 0


def test_more_streams_than_the_batch_wait_their_turn(local: lmql.LLM) -> None:
    server = Server("lmql-tiny", "--max_batch", "2")
    try:
        prompts = {sid: local.encode_prompt(p) for sid, p in enumerate(PROMPTS, start=1)}
        together = asyncio.run(_generate(server.endpoint, {sid: {"prompt": p, "max_tokens": 10}
                                                           for sid, p in prompts.items()}))
        for sid, prompt in prompts.items():
            solo = asyncio.run(_generate(server.endpoint, {sid: {"prompt": prompt, "max_tokens": 10}}))[sid]
            assert [e["token"] for e in together[sid]] == [e["token"] for e in solo]
    finally:
        assert server.stop() == 0


def test_repetition_penalty_matches_transformers(tiny_server: Server, local: lmql.LLM, reference: tuple) -> None:
    model, _ = reference
    prompt = local.encode_prompt("The cat sat on the mat. The cat sat on the")
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                  repetition_penalty=1.3, pad_token_id=0)[0, len(prompt):].tolist()
    got = asyncio.run(_generate(tiny_server.endpoint, {1: {"prompt": prompt, "max_tokens": 20,
                                                           "repetition_penalty": 1.3, "logit_bias": {"2": -100}}}))[1]
    plain = asyncio.run(_generate(tiny_server.endpoint, {1: {"prompt": prompt, "max_tokens": 20}}))[1]
    assert [e["token"] for e in got] == expected
    assert [e["token"] for e in got] != [e["token"] for e in plain]  # the penalty changed something


def test_top_k_and_top_p_narrow_sampling(tiny_server: Server, local: lmql.LLM) -> None:
    prompt = local.encode_prompt("Once upon a time")
    greedy = asyncio.run(_generate(tiny_server.endpoint, {1: {"prompt": prompt, "max_tokens": 12}}))[1]
    narrowed = asyncio.run(_generate(tiny_server.endpoint, {
        1: {"prompt": prompt, "max_tokens": 12, "temperature": 5.0, "top_k": 1},
        2: {"prompt": prompt, "max_tokens": 12, "temperature": 5.0, "top_p": 1e-6},
        3: {"prompt": prompt, "max_tokens": 12, "temperature": 5.0},
    }))
    tokens = [e["token"] for e in greedy]
    assert [e["token"] for e in narrowed[1]] == tokens  # only the most likely token is left
    assert [e["token"] for e in narrowed[2]] == tokens
    assert [e["token"] for e in narrowed[3]] != tokens  # hot sampling without them wanders off


def _chained_steps(server: Server) -> float:
    return server_metric(server, "lmql_engine_steps_chained", "lmql-tiny")


async def _staggered(endpoint: str, requests: dict[int, dict], late: dict[int, dict]) -> dict[int, list[dict]]:
    async with RawClient(endpoint) as c:
        for sid, request in requests.items():
            await c.send("GENERATE", {"model": "lmql-tiny", "stream_id": sid, **request})
        await asyncio.sleep(0.05)  # joins while the others are decoding
        for sid, request in late.items():
            await c.send("GENERATE", {"model": "lmql-tiny", "stream_id": sid, **request})
        return await c.collect(set(requests) | set(late))


@pytest.mark.parametrize("top_logprobs", [1, 2])
def test_chained_steps_give_the_tokens_of_ordinary_steps(tiny_server: Server, local: lmql.LLM,
                                                           top_logprobs: int) -> None:
    """Chained steps (the GPU path: decode step N+1 queued with step N's sampled tokens before the
    host reads them), forced on here (CPU), give exactly the ordinary steps' streams: with streams
    ending by EOS and by length mid-batch (rows reordered), a late arrival, and prefix reuse;
    with one top log-prob (one max reduction) and with two (a top-k)."""
    chained = Server("lmql-tiny", "--chain_steps", "True")
    try:
        prompts = ["The cat sat on the", "Q: What is love?\nA:", "Q:", "Love is", "Once upon a time"]
        requests = {i: {"prompt": local.encode_prompt(p), "max_tokens": 40 + 7 * i, "top_logprobs": top_logprobs}
                    for i, p in enumerate(prompts)}
        requests[1]["max_tokens"] = 12  # ends by length while the others go on
        late = {9: {"prompt": local.encode_prompt("A wise man once said"), "max_tokens": 30}}
        results = {name: asyncio.run(_staggered(server.endpoint, requests, late))
                   for name, server in (("plain", tiny_server), ("chained", chained))}
        for sid in [*requests, *late]:
            plain, fed = results["plain"][sid], results["chained"][sid]
            assert [e["token"] for e in fed] == [e["token"] for e in plain]
            assert [e["finish_reason"] for e in fed] == [e["finish_reason"] for e in plain]
            assert [e["logprob"] for e in fed] == pytest.approx([e["logprob"] for e in plain], abs=1e-4)
            for mine, theirs in zip(fed, plain, strict=True):
                assert mine["top_logprobs"].keys() == theirs["top_logprobs"].keys()
                assert list(mine["top_logprobs"].values()) == pytest.approx(list(theirs["top_logprobs"].values()),
                                                                            abs=1e-4)
        assert {results["plain"][sid][-1]["finish_reason"] for sid in requests} == {"stop", "length"}
        assert _chained_steps(chained) > 20 and _chained_steps(tiny_server) == 0
        # the host learnt the chained tokens afterwards: a grown prompt reuses all of them
        llm = lmql.model("lmql-tiny", endpoint=chained.endpoint)
        before = llm.model_info_sync()["model_info"]["kv_cache"]["reused_prefix_tokens"]
        first = results["chained"][4]
        grown = requests[4]["prompt"] + [e["token"] for e in first] + local.tokenizer.encode(" and", False)
        again = asyncio.run(_generate(chained.endpoint, {1: {"prompt": grown, "max_tokens": 4}}))[1]
        after = llm.model_info_sync()["model_info"]["kv_cache"]["reused_prefix_tokens"]
        assert after - before >= len(requests[4]["prompt"]) + len(first) - 1
        assert [e["token"] for e in again] == [e["token"] for e in asyncio.run(
            _generate(tiny_server.endpoint, {1: {"prompt": grown, "max_tokens": 4}}))[1]]
    finally:
        assert chained.stop() == 0

