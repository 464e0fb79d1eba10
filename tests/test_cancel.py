"""The CANCEL extension: a stream the client abandons stops on the server, served and in-process;
CANCEL of unknown or finished streams is harmless; clients never send it to servers that do not
advertise it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import lmql
from lmql_core.lmtp.client.loop import run_sync
from tests.conftest import RawClient, Server, server_metric, wait_until
from tests.lmtp_proxy import RecordingProxy

EOS = 50256
ENDLESS = {"max_tokens": 65536, "logit_bias": {str(EOS): -100}}  # ends only when cancelled


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    server = Server("random")  # its own: the counts below are of these tests' streams only
    yield server
    assert server.stop() == 0, server.output()


def counts(server: Server) -> dict[str, float]:
    return {name: server_metric(server, f"lmql_sequences_{name}") for name in ("cancelled", "finished")}


def assert_cancelled_once(server: Server, before: dict[str, float]) -> None:
    """The engine dropped exactly one stream as cancelled (none finished) and runs nothing."""
    wait_until(lambda: server_metric(server, "lmql_active_sequences") == 0)
    assert counts(server) == {"cancelled": before["cancelled"] + 1, "finished": before["finished"]}


def break_out_of_stream_sync(llm: lmql.LLM) -> None:
    for i, _ in enumerate(llm.stream_sync("Hello", **ENDLESS)):
        if i == 3:
            break


def test_model_info_advertises_cancel(server: Server) -> None:
    info = lmql.model("random", endpoint=server.endpoint).model_info_sync()["model_info"]
    assert info["extensions"]["cancel"] is True
    assert lmql.model("local:random").model_info_sync()["model_info"]["extensions"]["cancel"] is True


def test_breaking_out_of_stream_sync_stops_the_stream(server: Server) -> None:
    llm = lmql.model("random", endpoint=server.endpoint)
    before = counts(server)
    break_out_of_stream_sync(llm)
    assert_cancelled_once(server, before)
    assert len(llm.generate_sync("Hi", max_tokens=5)) > 0  # the connection serves on


def test_a_cancelled_task_stops_its_stream(server: Server) -> None:
    llm = lmql.model("random", endpoint=server.endpoint)
    llm.generate_sync("warm", max_tokens=1)  # MODEL_INFO asked: the client knows it may cancel
    before = counts(server)

    async def impatient() -> None:
        task = asyncio.ensure_future(llm.generate("Hello", **ENDLESS))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(impatient())
    assert_cancelled_once(server, before)


def test_closing_a_request_early_stops_its_stream(server: Server) -> None:
    llm = lmql.model("random", endpoint=server.endpoint)
    llm.model_info_sync()
    before = counts(server)

    async def first_entry() -> dict[str, Any]:
        entries = llm.client.request("GENERATE", {"model": "random", "prompt": [1, 2], **ENDLESS})
        entry = await anext(entries)
        await entries.aclose()
        return entry

    assert run_sync(first_entry())["finish_reason"] is None
    assert_cancelled_once(server, before)


def test_in_process_streams_stop_when_abandoned() -> None:
    llm = lmql.model("local:random")
    engine = llm.client.host.models["random"].engine
    before = engine.stats.sequences_cancelled
    break_out_of_stream_sync(llm)
    wait_until(lambda: engine.active_sequences() == 0)
    assert engine.stats.sequences_cancelled == before + 1


def test_cancel_on_the_wire(server: Server) -> None:
    """A raw CANCEL stops a running stream; unknown and finished ids get no answer; a malformed
    CANCEL is an error for no stream; the connection and the server live on."""
    before = counts(server)

    async def scenario() -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
        async with RawClient(server.endpoint) as c:
            await c.send("GENERATE", {"model": "random", "prompt": [5], "stream_id": "long", **ENDLESS})
            await c.frame()
            await c.send("CANCEL", {"stream_id": "long"})
            await asyncio.to_thread(wait_until, lambda: server_metric(server, "lmql_active_sequences") == 0)
            await c.send("GENERATE", {"model": "random", "prompt": [5], "stream_id": 7, "max_tokens": 2})
            finished = [e for e in await c.stream(7) if e["stream_id"] == 7]
            await c.send("CANCEL", {"stream_id": 7})  # finished
            await c.send("CANCEL", {"stream_id": 424242})  # never existed
            bad = []
            for malformed in ('CANCEL {}', 'CANCEL [1]', 'CANCEL {"stream_id": [1]}'):
                await c.send_raw(malformed)
                bad.append(await c.frame())
            await c.send("GENERATE", {"model": "random", "prompt": [6], "stream_id": 8, "max_tokens": 1})
            return finished, bad, (await c.frame())[1]

    finished, bad, after = asyncio.run(scenario())
    assert [e["finish_reason"] for e in finished] == [None, "length"]
    assert [(command, [sorted(e) for e in payload]) for command, payload in bad] == [
        ("TOKEN", [["error", "stream_id"]])] * 3
    assert [e["stream_id"] for e in after] == [8]  # nothing answered the two CANCELs before it
    assert counts(server) == {"cancelled": before["cancelled"] + 1, "finished": before["finished"] + 2}
    assert server.alive()


def without_cancel(frame: str) -> str:
    """A server's frame as a server without the CANCEL extension would send it."""
    command, _, body = frame.partition(" ")
    if command != "MSG":
        return frame
    payload = json.loads(body)
    for entry in payload:
        entry.get("model_info", {}).get("extensions", {}).pop("cancel", None)
    return f"{command} {json.dumps(payload)}"


@pytest.mark.parametrize("advertised", [True, False])
def test_cancel_is_sent_only_to_servers_that_advertise_it(server: Server, advertised: bool) -> None:
    proxy = RecordingProxy(server.endpoint, rewrite=None if advertised else without_cancel)
    try:
        llm = lmql.model("random", endpoint=proxy.endpoint)
        before = counts(server)
        for i, _ in enumerate(llm.stream_sync("Hello", max_tokens=300, logit_bias={str(EOS): -100})):
            if i == 3:
                break
        wait_until(lambda: server_metric(server, "lmql_active_sequences") == 0)
        assert ("CANCEL" in proxy.commands()) is advertised
        # without it, today's behaviour: the stream runs to its end
        ended = "cancelled" if advertised else "finished"
        assert counts(server)[ended] == before[ended] + 1
    finally:
        proxy.close()
