"""Sampling and the end of the context, end to end on a served random model: what the server
draws must follow an independent numpy reference computed from the model's logits (chi-square),
and a full context ends a stream with "length", served and in-process.

Runs do not repeat: the engine's step noise starts from the same seed in every server, but which
streams share a step (and so which noise each draws) depends on when their requests arrive. The
draws of one run are independent (each step has a seed of its own); reruns are not independent
of each other (they share the noise of steps batched alike), so passing reruns say little about
a rare failure."""

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
from tests.sampling_reference import ALPHA, assert_drawn_from, distribution

VOCAB, EOS, SEED, CONTEXT = 12, 11, 1, 16
LOADER = ("--seed", str(SEED), "--vocab_size", str(VOCAB), "--eos_token_id", str(EOS),
          "--max_context", str(CONTEXT))
DRAWS = 2500  # per request of the bias test
# The settings test is one chi-square test per setting: each at FAMILY_ALPHA / len(SETTINGS)
# (Bonferroni), so that a correct sampler fails a run with a chance of about FAMILY_ALPHA. (Five
# tests at ALPHA, on bins expected only 5-10 times, failed a correct sampler about once in 1250
# runs: 8e-4 in 2e6 runs simulated from the reference; CI saw one, p = 2.9e-5.)
FAMILY_ALPHA = ALPHA / 10
SETTING_DRAWS = 4000  # per setting: at that alpha, T 10% off fails at T=0.5 93 times in 100
# Tokens expected fewer times than this are counted together (``pooled``): at 5 (the reference's
# rule) the chi-square law's far tail is too light, so a correct sampler failed up to 7 times as
# often as alpha says (T=0.5: 1.4e-5 at 2e-6); from 50 on within 1.7 times (2e7 runs simulated:
# 1.2e-5 for the family)
POOL_BELOW = 50.0


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


def pooled(tokens: list[int], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` and ``probs`` with the possible tokens expected fewer than POOL_BELOW times
    counted as one: the first of them, or, where together they are still that rare, the least
    likely of the others. Tokens of probability 0 stay apart (drawing one fails the test)."""
    tokens_array = np.asarray(tokens, dtype=np.int64)
    expected = probs * len(tokens)
    rare = np.flatnonzero((probs > 0) & (expected < POOL_BELOW))
    if not len(rare):
        return tokens_array, probs
    common = np.flatnonzero(expected >= POOL_BELOW)
    into = rare[0] if expected[rare].sum() >= POOL_BELOW or not len(common) else common[np.argmin(expected[common])]
    counted_as = np.arange(len(probs))
    counted_as[rare] = into
    merged = np.zeros_like(probs)
    np.add.at(merged, counted_as, probs)
    return counted_as[tokens_array], merged


def test_served_sampling_follows_the_reference(small_random: Server) -> None:
    """Each setting's streams, interleaved in shared batches, draw from its own distribution."""
    prompt = [0]
    requests = [{"prompt": prompt, **s} for s in SETTINGS for _ in range(SETTING_DRAWS)]
    order = np.random.default_rng(0).permutation(len(requests))  # settings mixed within every step
    drawn = asyncio.run(first_tokens(small_random.endpoint, "random", [requests[i] for i in order]))
    by_setting: list[list[int]] = [[] for _ in SETTINGS]
    for i, token in zip(order, drawn, strict=True):
        by_setting[i // SETTING_DRAWS].append(token)
    row = model_row(prompt)
    failed = []
    for setting, tokens in zip(SETTINGS, by_setting, strict=True):
        bias = {int(t): b for t, b in setting.get("logit_bias", {}).items()}
        expected = distribution(row, setting["temperature"], setting.get("top_k", 0), setting.get("top_p", 1.0),
                                bias)
        try:
            assert_drawn_from(*pooled(tokens, expected), alpha=FAMILY_ALPHA / len(SETTINGS))
        except AssertionError as e:
            failed.append(f"{setting}: {e}")
    assert not failed, "\n".join(failed)


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
    assert_drawn_from(*pooled(tokens, expected))


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
