"""Clients that hog, stall or never finish connecting, on real server processes (issue 18):
fairness between connections, slow readers, half-open connections, the connection cap, and a
shutdown that never waits on a client longer than its grace period."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import aiohttp
import pytest

from tests.attackers import connect, health, open_websocket, read_frames, send_frame
from tests.conftest import RawClient, Server, server_metric, wait_until


def _long_generate(sid: int, top_logprobs: int = 100) -> dict:
    return {"model": "random", "prompt": [1, 7 + sid], "stream_id": sid, "max_tokens": 65536,
            "top_logprobs": top_logprobs}


def test_sigterm_ends_the_server_within_its_grace_period_while_a_client_does_not_read() -> None:
    server = Server("random", "--shutdown-grace", "2")
    try:
        sock = open_websocket(server.endpoint, rcvbuf=4096)
        for sid in range(8):
            send_frame(sock, "GENERATE", _long_generate(sid))
        # ~9 MB of frames, twice what the kernel buffers for a socket here (tcp_wmem's 4 MB):
        # the server's sends now wait on this client
        wait_until(lambda: server_metric(server, "lmql_tokens_generated") >= 4000, timeout=120)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=2 + 8)  # the grace, and room for a busy CI machine
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {time.monotonic() - started:.0f} s after SIGTERM:\n{server.output()}")
        assert code == 0, server.output()
        sock.close()
    finally:
        server.stop()


def test_a_client_that_does_not_read_has_its_streams_ended_and_freed() -> None:
    limit = 1_000_000
    server = Server("random", "--max-outgoing-bytes", str(limit))
    try:
        sock = open_websocket(server.endpoint, rcvbuf=4096)
        for sid in range(8):
            send_frame(sock, "GENERATE", _long_generate(sid))
        # the engine lets them go long before the context (2,048 tokens each) would end them
        wait_until(lambda: health(server.endpoint)["models"]["random"]["active_sequences"] == 0, 30)
        entries = [e for command, payload in read_frames(sock) if command == "TOKEN" for e in payload]
        ends = {e["stream_id"]: e for e in entries if "error" in e or e.get("finish_reason")}
        assert set(ends) == set(range(8))
        assert all("did not read the server's frames" in e["error"] for e in ends.values())
        assert len(entries) - 8 < 8 * 2048  # cut short
        sock.close()
        wait_until(lambda: health(server.endpoint)["connections"] == 0, 30)
    finally:
        assert server.stop() == 0, server.output()


def test_one_connection_with_a_thousand_streams_does_not_starve_another() -> None:
    server = Server("random")
    try:
        async def scenario() -> tuple[list[dict], int]:
            async with RawClient(server.endpoint) as hog, RawClient(server.endpoint) as newcomer:
                for sid in range(1024):
                    await hog.send("GENERATE", {"model": "random", "prompt": [1 + sid % 100], "stream_id": sid,
                                                "max_tokens": 2000})
                drain = asyncio.create_task(_drain(hog))
                await asyncio.to_thread(wait_until, lambda: _waiting(server) > 900, 30)
                await newcomer.send("GENERATE", {"model": "random", "prompt": [5, 6], "stream_id": 1,
                                                 "max_tokens": 24})
                answer = await newcomer.stream(1, timeout=120)
                still_waiting = await asyncio.to_thread(_waiting, server)
                drain.cancel()
                return answer, still_waiting

        answer, still_waiting = asyncio.run(scenario())
        assert len(answer) == 24 and answer[-1]["finish_reason"] == "length"
        # first come, first served would have run the hog's queue before it
        assert still_waiting > 800
    finally:
        assert server.stop() == 0, server.output()


async def _drain(client: RawClient) -> None:
    while True:
        await client.frame(timeout=600)


def _waiting(server: Server) -> int:
    return int(health(server.endpoint)["models"]["random"]["waiting"])


def test_streams_beyond_the_per_connection_cap_get_a_clear_error() -> None:
    server = Server("random", "--max-streams", "3")
    try:
        async def scenario() -> list[dict]:
            async with RawClient(server.endpoint) as c:
                for sid in range(4):
                    await c.send("GENERATE", {"model": "random", "prompt": [1], "stream_id": sid,
                                              "max_tokens": 500})
                return (await c.collect({3}))[3]

        [entry] = asyncio.run(scenario())
        assert "this connection has 3 streams running or queued" in entry["error"]
        assert "--max-streams" in entry["error"]
    finally:
        assert server.stop() == 0, server.output()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_half_open_connections_are_dropped_after_the_handshake_timeout() -> None:
    server = Server("random", "--handshake-timeout", "1")
    try:
        silent = [connect(server.endpoint) for _ in range(10)]
        slow = [connect(server.endpoint) for _ in range(10)]
        for sock in slow:  # a request head that never ends
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        assert all(_closed_by_server(sock) for sock in silent + slow)
        assert health(server.endpoint)["status"] == "ok"
        for sock in silent + slow:
            sock.close()
    finally:
        assert server.stop() == 0, server.output()


def test_connections_beyond_the_cap_are_refused_with_503() -> None:
    server = Server("random", "--max-connections", "3")
    try:
        async def connect_ws(session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
            return await session.ws_connect(f"ws://{server.endpoint}/")

        async def scenario() -> tuple[int, str, int]:
            async with aiohttp.ClientSession() as session:
                held = [await connect_ws(session) for _ in range(3)]
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await connect_ws(session)
                await held.pop().close()
                for _ in range(50):  # the server notices the close a moment later
                    try:
                        held.append(await connect_ws(session))
                        break
                    except aiohttp.WSServerHandshakeError:
                        await asyncio.sleep(0.1)
                admitted = len(held)
                for ws in held:
                    await ws.close()
                return refused.value.status, refused.value.message, admitted

        status, message, admitted = asyncio.run(scenario())
        assert status == 503 and admitted == 3, message
    finally:
        assert server.stop() == 0, server.output()


def _text_reply(server: Server, command: str, body: dict) -> dict:
    async def scenario() -> dict:
        async with RawClient(server.endpoint) as c:
            await c.send(command, {"model": "lmql-tiny", "stream_id": 1, "max_tokens": 4, **body})
            return (await c.stream(1))[-1]

    return asyncio.run(scenario())


@pytest.mark.parametrize(("command", "body", "field"), [
    ("GENERATE", {"text": "a" * 15_000_000}, "text"),
    ("SCORE", {"text": "a", "scored_text": "b" * 13_000_000}, "scored_text"),
])
def test_huge_texts_are_refused_before_tokenizing(tiny_server: Server, command: str, body: dict,
                                                  field: str) -> None:
    entry = _text_reply(tiny_server, command, body)
    # lmql-tiny's context holds 512 tokens; 64 characters a token is the most accepted
    assert f"'{field}' has {len(body[field])} characters" in entry["error"]
    assert "at most 32768 characters" in entry["error"]
    assert health(tiny_server.endpoint)["status"] == "ok"


@pytest.mark.parametrize("field", ["text", "scored_text"])
def test_a_lone_surrogate_in_text_mode_is_a_bad_request(tiny_server: Server, field: str) -> None:
    body = {"text": "Once upon", "scored_text": " a time", field: "x\ud800y"}
    entry = _text_reply(tiny_server, "SCORE" if field == "scored_text" else "GENERATE", body)
    assert f"'{field}' is not valid Unicode: it holds a lone surrogate" in entry["error"]
    assert "internal error" not in entry["error"]
    assert _text_reply(tiny_server, "GENERATE", {"text": "Once upon a time"})["finish_reason"] == "length"
