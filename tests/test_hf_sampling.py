"""lmql-tiny's sampling against transformers' logits and a numpy reference (chi-square at
significance ALPHA, seeded engine), and its context limit: a stream that fills
``--max_seq_len`` ends with "length", served and in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.lmtp.client.loop import run_sync  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import RawClient, Server, first_tokens  # noqa: E402
from tests.sampling_reference import assert_drawn_from, distribution  # noqa: E402

pytestmark = pytest.mark.hf
CONTEXT = 64
EOS = 2
DRAWS = 1500
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def short_context() -> Iterator[Server]:
    server = Server("lmql-tiny", "--max_seq_len", str(CONTEXT))
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    return lmql.model("local:lmql-tiny").encode_prompt(PROMPT)


def transformers_row(prompt: list[int]) -> np.ndarray:
    """The next-token logits after ``prompt``, from transformers' own forward pass."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled_path("lmql-tiny")).eval()
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1].double().numpy()


def test_sampling_follows_transformers_logits(short_context: Server, prompt: list[int]) -> None:
    row = transformers_row(prompt)
    best = np.argsort(-row)
    settings: list[dict[str, Any]] = [
        {"temperature": 1.0, "logit_bias": {int(best[0]): -3.0, int(best[2]): 2.5}},
        {"temperature": 1.3, "top_p": 0.9},
        {"temperature": 0.8, "top_k": 5},
    ]
    requests = [{"prompt": prompt, **s, "logit_bias": {str(t): b for t, b in s.get("logit_bias", {}).items()}}
                for s in settings for _ in range(DRAWS)]
    drawn = asyncio.run(first_tokens(short_context.endpoint, "lmql-tiny", requests))
    for i, s in enumerate(settings):
        expected = distribution(row, s["temperature"], s.get("top_k", 0), s.get("top_p", 1.0), s.get("logit_bias"))
        assert_drawn_from(drawn[i * DRAWS:(i + 1) * DRAWS], expected)


def ends_at_the_context(entries: list[dict[str, Any]], prompt: list[int]) -> None:
    assert all("error" not in e for e in entries), entries[-1]
    assert len(prompt) + len(entries) == CONTEXT
    assert [e["finish_reason"] for e in entries] == [None] * (len(entries) - 1) + ["length"]


def no_eos_request(prompt: list[int]) -> dict[str, Any]:
    return {"model": "lmql-tiny", "prompt": prompt, "max_tokens": 500, "logit_bias": {str(EOS): -100}}


@pytest.mark.parametrize("room", ["all", "one token"])
def test_a_full_context_ends_with_length(short_context: Server, prompt: list[int], room: str) -> None:
    longer = prompt + [prompt[-1]] * (0 if room == "all" else CONTEXT - 1 - len(prompt))

    async def scenario() -> list[dict[str, Any]]:
        async with RawClient(short_context.endpoint) as c:
            await c.send("GENERATE", {**no_eos_request(longer), "stream_id": 1})
            return await c.stream(1)

    ends_at_the_context(asyncio.run(scenario()), longer)
    assert short_context.alive()


def test_a_full_context_ends_with_length_in_process(prompt: list[int]) -> None:
    llm = lmql.model("local:lmql-tiny", max_seq_len=CONTEXT)

    async def generate() -> list[dict[str, Any]]:
        return [e async for e in llm.client.request("GENERATE", no_eos_request(prompt))]

    ends_at_the_context(run_sync(generate()), prompt)
