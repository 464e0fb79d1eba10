"""Sampling and the end of the context, end to end on a served random model: what the server
draws must follow an independent numpy reference computed from the model's logits (chi-square
at significance ALPHA; the engine is seeded, so runs repeat), and a full context ends a stream
with "length", served and in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import lmql
from lmql_core.base.backend import StepInput
from lmql_core.builtin.random_backend import RandomBackend
from lmql_core.lmtp.client.loop import run_sync
from tests.conftest import RawClient, Server, first_tokens
from tests.sampling_reference import assert_drawn_from, distribution

VOCAB, EOS, SEED, CONTEXT = 12, 11, 1, 16
LOADER = ("--seed", str(SEED), "--vocab_size", str(VOCAB), "--eos_token_id", str(EOS),
          "--max_context", str(CONTEXT))
DRAWS = 2500  # per setting


@pytest.fixture(scope="module")
def small_random() -> Iterator[Server]:
    server = Server("random", *LOADER)
    yield server
    assert server.stop() == 0, server.output()


def model_row(prompt: list[int]) -> np.ndarray:
    """The logits the served model computes after ``prompt``, from the backend itself."""
    backend = RandomBackend(seed=SEED, vocab_size=VOCAB, eos_token_id=EOS, max_context=CONTEXT)
    return np.asarray(backend.forward([StepInput(1, prompt)]).last_logits[0], dtype=np.float64)


SETTINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.5},
    {"temperature": 2.0, "top_p": 0.8},
    {"temperature": 1.5, "top_k": 4},
    {"temperature": 1.0, "logit_bias": {"1": -3.0, "4": 2.5}},
]


def test_served_sampling_follows_the_reference(small_random: Server) -> None:
    """Each setting's streams, interleaved in shared batches, draw from its own distribution."""
    prompt = [0]
    requests = [{"prompt": prompt, **s} for s in SETTINGS for _ in range(DRAWS)]
    order = np.random.default_rng(0).permutation(len(requests))  # settings mixed within every step
    drawn = asyncio.run(first_tokens(small_random.endpoint, "random", [requests[i] for i in order]))
    by_setting: list[list[int]] = [[] for _ in SETTINGS]
    for i, token in zip(order, drawn, strict=True):
        by_setting[i // DRAWS].append(token)
    row = model_row(prompt)
    for setting, tokens in zip(SETTINGS, by_setting, strict=True):
        bias = {int(t): b for t, b in setting.get("logit_bias", {}).items()}
        expected = distribution(row, setting["temperature"], setting.get("top_k", 0), setting.get("top_p", 1.0),
                                bias)
        assert_drawn_from(tokens, expected), setting


def test_the_bias_moves_the_distribution_as_the_reference_says(small_random: Server) -> None:
    """+2.5 on a token multiplies its odds against an unbiased one by e^2.5 (about 12)."""
    row = model_row([0])
    unbiased, favoured = 6, 4  # 0.176 and 0.074 without a bias
    tokens = asyncio.run(first_tokens(small_random.endpoint, "random",
                                      [{"prompt": [0], "temperature": 1.0, "logit_bias": {str(favoured): 2.5}}] * DRAWS))
    counts = np.bincount(tokens, minlength=VOCAB)
    expected = distribution(row, bias={favoured: 2.5})
    assert expected[favoured] / expected[unbiased] == pytest.approx(np.exp(2.5) * np.exp(row[favoured] - row[unbiased]))
    assert counts[favoured] > counts[unbiased] * 2  # it now leads; without the bias it trails 2:5
    assert_drawn_from(tokens, expected)


def context_stream(entries: list[dict[str, Any]], prompt: list[int]) -> None:
    assert all("error" not in e for e in entries), entries
    assert len(prompt) + len(entries) == CONTEXT
    assert [e["finish_reason"] for e in entries] == [None] * (len(entries) - 1) + ["length"]


@pytest.mark.parametrize("prompt_length", [1, 9, CONTEXT - 1])
def test_a_full_context_ends_the_stream_with_length(small_random: Server, prompt_length: int) -> None:
    prompt = [i % EOS for i in range(prompt_length)]
    request = {"model": "random", "prompt": prompt, "max_tokens": 100, "temperature": 0.8,
               "logit_bias": {str(EOS): -100}}  # never "stop": only the context can end it

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with RawClient(small_random.endpoint) as c:
            await c.send("GENERATE", {**request, "stream_id": 1})
            generated = await c.stream(1)
            await c.send("GENERATE", {**request, "stream_id": 2, "prompt": [1] * CONTEXT})
            return generated, await c.stream(2)

    generated, too_long = asyncio.run(scenario())
    context_stream(generated, prompt)
    assert "context holds 16" in too_long[0]["error"]
    assert small_random.alive()


def test_a_full_context_ends_the_stream_with_length_in_process() -> None:
    llm = lmql.model("local:random", seed=SEED, vocab_size=VOCAB, eos_token_id=EOS, max_context=CONTEXT)
    prompt = [3, 4, 5]

    async def generate() -> list[dict[str, Any]]:
        request = {"model": "random", "prompt": prompt, "max_tokens": 100, "logit_bias": {str(EOS): -100}}
        return [e async for e in llm.client.request("GENERATE", request)]

    context_stream(run_sync(generate()), prompt)
