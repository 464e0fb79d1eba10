"""A backend from another distribution, found through the `lmql` entry-point group.

The package lives in tests/plugin_example and is installed into the test environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lmql
from lmql_core.errors import ModelLoadError, ServerError
from tests.conftest import RawClient, Server, run_lmql, the_error

pytest.importorskip("lmql_example_backend", reason="pip install ./tests/plugin_example")


def test_listed_by_lmql_backends() -> None:
    result = subprocess.run([sys.executable, "-m", "lmql_core", "backends"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    block = lines[lines.index("counting"):][:4]  # the heading, then indented details
    assert "    prefixes: counting:" in block
    assert "    from: lmql-example-backend (plugin counting)" in block


def test_in_process_through_the_prefix() -> None:
    llm = lmql.model("local:counting:anything", fail_on=250)
    assert llm.generate_sync("a", max_tokens=4) == "bcde"
    info = llm.model_info_sync()["model_info"]
    assert info["fail_on"] == 250
    assert info["kwargs"] == repr({"cuda": False, "dtype": None})


@pytest.fixture(scope="module")
def counting_server() -> Iterator[Server]:
    server = Server("counting:x")
    yield server
    assert server.stop() == 0, server.output()


def test_served_by_lmql_serve_model(counting_server: Server) -> None:
    llm = lmql.model("counting:x", endpoint=counting_server.endpoint)
    assert llm.generate_sync("0", max_tokens=5) == "12345"


def counting_logprob(values: str, after: str) -> float:
    """The reference: each token has logit 10 where it is its predecessor + 1 and 0 elsewhere."""
    total = 0.0
    for previous, token in zip(after[-1] + values[:-1], values, strict=True):
        row = np.zeros(256)
        row[(ord(previous) + 1) % 256] = 10.0
        total += row[ord(token)] - np.log(np.exp(row).sum())
    return total


def test_scored_through_lmql_serve_model(counting_server: Server) -> None:
    """The example honours StepInput.all_logits (it did not: SCORE failed with 'model error: 1')."""
    llm = lmql.model("counting:x", endpoint=counting_server.endpoint)
    result = llm.score_sync("ab", ["cd", "cx"])
    assert result.scores() == pytest.approx([counting_logprob("cd", "ab"), counting_logprob("cx", "ab")], abs=1e-4)


def test_a_backend_that_cannot_score_fails_the_score_with_a_clear_error() -> None:
    llm = lmql.model("local:counting:noscore", scores=False)
    with pytest.raises(ServerError, match="CountingBackend cannot score.*StepOutput.all_logits"):
        llm.score_sync("ab", ["cd"])
    assert llm.generate_sync("a", max_tokens=2) == "bc"  # the model lives on


def test_a_backend_without_its_required_attributes_fails_at_load() -> None:
    with pytest.raises(ModelLoadError, match=r"'counting' \(CountingBackend\) does not set what every "
                       "backend must: ops: the array operations"):
        lmql.model("local:counting:noops", leave_out="ops").generate_sync("a", max_tokens=1)  # first use


def test_one_failed_row_ends_only_its_own_stream() -> None:
    """A row the backend reports in StepOutput.errors fails its stream; the batch goes on."""
    server = Server("counting:x", "--fail_on", "120")  # 'x'
    try:
        llm = lmql.model("counting:x", endpoint=server.endpoint)

        async def all_at_once() -> list[object]:
            prompts = ["a", "b", "x", "c", "d", "e", "f", "g"]
            return await asyncio.gather(*(llm.generate(p, max_tokens=3) for p in prompts),
                                        return_exceptions=True)

        results = asyncio.run(all_at_once())
        failed = results.pop(2)
        assert isinstance(failed, ServerError) and "token 120 is not allowed" in str(failed)
        assert results == ["bcd", "cde", "def", "efg", "fgh", "ghi", "hij"]
        assert llm.generate_sync("0", max_tokens=2) == "12"  # the server lives on
    finally:
        assert server.stop() == 0


def test_the_tokenizer_reaches_the_backends_loader_in_process() -> None:
    llm = lmql.model("local:counting:tok", tokenizer="counting-bytes")
    assert llm.model_info_sync()["model_info"]["tokenizer"] == repr("counting-bytes")


def test_the_tokenizer_reaches_the_backends_loader_from_lmql_generate() -> None:
    """The example's loader rejects tokenizers other than its own: the refusal shows it got one."""
    command = ("generate", "a", "-m", "local:counting:cli", "--max-tokens", "3")
    good = run_lmql(*command, "--tokenizer", "counting-bytes")
    assert good.returncode == 0, good.stderr
    assert "abc" in good.stdout
    assert "no tokenizer 'other' for the counting backend" in the_error(run_lmql(*command, "--tokenizer", "other"))


def test_the_backends_own_tokenizer_comes_before_the_loaders(tmp_path: Path) -> None:
    """register(..., tokenizer=) is asked first for the backend's models: a counting model named by
    a folder that holds a tokenizer.json still gets the counting bytes (the tokenizer.json loader
    answered first before, and 'a' became an unknown word)."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "b": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    llm = lmql.model(f"local:counting:{tmp_path}")
    assert llm.tokenizer.encode("ab") == [97, 98]
    assert llm.generate_sync("a", max_tokens=3) == "bcd"


def test_local_models_offer_the_registered_tokenizer() -> None:
    """The in-process server tokenizes with register(..., tokenizer=) when the backend has no
    tokenizer.json of its own: text mode and TOKENIZER are offered, as over a socket."""
    info = lmql.model("local:counting:offered").model_info_sync()["model_info"]
    assert info["extensions"] == {"tokenizer": "bytes-256-None", "text": True, "cancel": True,
                                  "constraints": [], "template": None, "chat": False}  # no EOS: a grammar could not end


def test_text_mode_without_a_tokenizer_is_an_error_and_the_server_lives_on() -> None:
    server = Server("counting:no-tokenizer")

    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {"model": "counting:no-tokenizer", "stream_id": 1, "text": "hi"})
            text = await c.stream(1)
            await c.send("TOKENIZER", {"model": "counting:no-tokenizer", "stream_id": 2})
            offer = await c.stream(2)
            await c.send("GENERATE", {"model": "counting:no-tokenizer", "stream_id": 3, "prompt": [97],
                                      "max_tokens": 2, "temperature": 0})
            return text, offer, await c.stream(3)

    try:
        [text], [offer], tokens = asyncio.run(scenario())
        info = lmql.model("counting:no-tokenizer", endpoint=server.endpoint).model_info_sync()["model_info"]
    finally:
        assert server.stop() == 0, server.output()
    assert "text mode needs the model's tokenizer" in text["error"]
    assert "no tokenizer to send for 'counting:no-tokenizer'" in offer["error"]
    assert [e["token"] for e in tokens] == [98, 99]
    assert info["extensions"] == {"tokenizer": None, "text": False, "cancel": True, "constraints": [],
                                  "template": None, "chat": False}


def test_a_plugin_adds_a_subcommand_but_cannot_replace_the_cores() -> None:
    result = run_lmql("count-to", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 2 3"
    assert "count-to" in run_lmql("--help").stdout
    assert "the plugin's backends" not in run_lmql("backends").stdout


def test_a_template_to_a_model_without_an_end_of_sequence_token_ends_with_an_error(
        counting_server: Server) -> None:
    """The counting backend has no EOS token, which a template's holes end at: the template
    extension is not offered, a template GENERATE ends with the reason, the connection serves on."""
    async def scenario() -> tuple[list[dict], list[dict]]:
        async with RawClient(counting_server.endpoint) as client:
            await client.send("GENERATE", {"model": "counting:x", "stream_id": "t", "prompt": [97, 98],
                                           "template": {"holes": [{"name": "X", "max_length": 4}], "texts": []}})
            refused = await client.stream("t")
            await client.send("GENERATE", {"model": "counting:x", "stream_id": "ok", "prompt": [97, 98],
                                           "max_tokens": 3})
            return refused, await client.stream("ok")

    refused, ok = asyncio.run(scenario())
    assert "does not run templates" in refused[-1].get("error", ""), refused
    assert len(ok) == 3 and "error" not in ok[-1]
