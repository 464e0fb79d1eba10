"""A soak (issue 18): attackers and normal clients against one real lmql-tiny server process.

Attackers: websockets that never read (4 KB receive buffers, long streams with 100 top
log-probs each), a client flooding the queue with a thousand long streams, half-open TCP
connections, and a client sending broken frames. Meanwhile normal clients ask for greedy
continuations. Asserted: the normal clients' answers equal an independent reference
(transformers, step by step), their time to first token stays bounded, the server's memory comes
back after the attackers leave, and SIGTERM ends it within its grace period, a stalled client
notwithstanding. ``LMQL_SOAK_ATTACK_SECONDS`` sets how long the attack lasts (default 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.attackers import connect, health, open_websocket, send_frame
from tests.conftest import RawClient, Server

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

from lmql_hf.bundled import bundled_path  # noqa: E402

pytestmark = pytest.mark.hf
PROMPTS = ["Once upon a time", "The cat sat on the", "A wise man once said", "Q: What is love?\nA:"]
NEW_TOKENS = 16
GRACE_S = 3.0
# Time to first token for a normal client, under attack. With fair sharing, its request joins
# the batch at the next step (the flooder's sequences above their share are preempted), so it
# waits for the step in flight plus its own prefill. The slowest step here re-feeds preempted
# sequences (up to the 2,048-token budget): ~0.3 s for lmql-tiny on one busy CI core, and the
# event loop also encodes the attackers' frames. 10 s is that many times over, for a loaded
# 2-core runner; first come, first served made it minutes (the flood's ~400k tokens go first).
TTFT_BOUND_S = 10.0
# After the attackers leave, RSS may stay above its start: a first heavy load raises a plateau
# (torch's prefill temporaries freed into glibc's arenas, ~100 MiB for lmql-tiny) and
# fragmentation moves 20-45 MiB above that; repeated attacks do not raise it further (README,
# "Limits"; scripts/rss_plateau.py). A leak of the attack's streams (16 x 512 tokens x 100 top
# log-probs for each stalled reader, a thousand queued sequences) would exceed this.
RSS_GROWTH_BOUND_MIB = 150
BAD_FRAMES = ["", "GENERATE {not json", "GENERATE [1]", "X" * 50_000 + " {}", "GENERATE " + "[" * 50_000,
              'GENERATE {"model": "lmql-tiny", "stream_id": 1, "prompt": [1], "logit_bias": {" 7 ": 1}}',
              'GENERATE {"model": "lmql-tiny", "stream_id": 2, "prompt": [1], "temperature": 1e-300}']


def _references() -> dict[str, tuple[list[int], list[int]]]:
    """Each prompt's token ids and its greedy continuation, by transformers (stopping at EOS
    as the server does)."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    path = bundled_path("lmql-tiny")
    assert path is not None
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    bos, eos = model.config.bos_token_id, model.config.eos_token_id
    references = {}
    for text in PROMPTS:
        ids = ([bos] if bos is not None else []) + tokenizer.encode(text, add_special_tokens=False).ids
        generated: list[int] = []
        with torch.no_grad():
            while len(generated) < NEW_TOKENS and (not generated or generated[-1] != eos):
                generated.append(int(model(torch.tensor([ids + generated])).logits[0, -1].argmax()))
        references[text] = (ids, generated)
    return references


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _normal_client(server: Server, references: dict, ttfts: list[float], stop: asyncio.Event) -> int:
    """Asks for each prompt in turn until ``stop``; checks every answer. Returns the count."""
    answered = 0
    while not stop.is_set() or answered == 0:
        async with RawClient(server.endpoint) as c:
            for sid, (prompt, expected) in enumerate(references.values()):
                sent = time.monotonic()
                await c.send("GENERATE", {"model": "lmql-tiny", "prompt": prompt, "stream_id": sid,
                                          "max_tokens": NEW_TOKENS})
                entries = await _first_entries(c, sid)
                ttfts.append(time.monotonic() - sent)
                if entries[-1].get("finish_reason") is None and "error" not in entries[-1]:
                    entries += await c.stream(sid, timeout=120)
                assert [e.get("token") for e in entries] == expected, entries[-1]
                answered += 1
    return answered


async def _first_entries(client: RawClient, sid: int) -> list[dict]:
    """The stream's entries in the first frame that has any: a frame can carry several steps'
    tokens (the server coalesces steps its event loop has not sent yet)."""
    while True:
        _, payload = await client.frame(timeout=120)
        entries = [dict(entry) for entry in payload if entry.get("stream_id") == sid]
        if entries:
            return entries


async def _flood(server: Server, stop: asyncio.Event) -> None:
    async with RawClient(server.endpoint) as c:
        for sid in range(1024):
            await c.send("GENERATE", {"model": "lmql-tiny", "prompt": [1 + sid % 500, 7], "stream_id": sid,
                                      "max_tokens": 400})
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await c.frame(timeout=1)


def _stalled_client(server: Server) -> object:
    sock = open_websocket(server.endpoint, rcvbuf=4096)
    for sid in range(16):
        send_frame(sock, "GENERATE", {"model": "lmql-tiny", "prompt": [1, 7 + sid], "stream_id": sid,
                                      "max_tokens": 65536, "top_logprobs": 100})
    return sock


async def _bad_frames(server: Server, stop: asyncio.Event) -> None:
    async with RawClient(server.endpoint) as c:
        while not stop.is_set():
            for frame in BAD_FRAMES:
                await c.send_raw(frame)
            for _ in BAD_FRAMES:
                await c.frame()
            await asyncio.sleep(0.2)


async def _half_open(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        socks = [connect(server.endpoint) for _ in range(50)]
        socks[0].sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
        await asyncio.sleep(3)
        for sock in socks:
            sock.close()


def test_attackers_do_not_hurt_normal_clients() -> None:
    seconds = float(os.environ.get("LMQL_SOAK_ATTACK_SECONDS", "20"))
    references = _references()
    server = Server("lmql-tiny", "--max-outgoing-bytes", "2000000", "--handshake-timeout", "2",
                    "--shutdown-grace", str(GRACE_S))
    try:
        warm_ttfts: list[float] = []
        warm_up = asyncio.Event()
        warm_up.set()
        asyncio.run(_normal_client(server, references, warm_ttfts, warm_up))
        rss_start = _rss_mib(server.proc.pid)

        async def attack() -> list[float]:
            stop, ttfts = asyncio.Event(), []
            stalled = [_stalled_client(server) for _ in range(3)]
            attackers = [asyncio.create_task(a) for a in (_flood(server, stop), _bad_frames(server, stop),
                                                           _half_open(server, stop))]
            await asyncio.sleep(1)  # the flood is queued
            normal = [asyncio.create_task(_normal_client(server, references, ttfts, stop)) for _ in range(3)]
            await asyncio.sleep(seconds)
            stop.set()
            assert all(n > 0 for n in await asyncio.gather(*normal))
            await asyncio.gather(*attackers)
            for sock in stalled:
                sock.close()  # type: ignore[attr-defined]
            return ttfts

        ttfts = asyncio.run(attack())
        assert max(ttfts) < TTFT_BOUND_S, sorted(ttfts)[-5:]
        _wait_until_idle(server)
        rss_end = _rss_mib(server.proc.pid)
        print(f"soak: {len(ttfts)} answers, TTFT max {max(ttfts):.2f} s, "
              f"RSS {rss_start:.0f} -> {rss_end:.0f} MiB")
        assert rss_end - rss_start < RSS_GROWTH_BOUND_MIB
        _sigterm_with_a_stalled_client(server)
    finally:
        server.stop()


def _wait_until_idle(server: Server) -> None:
    deadline = time.monotonic() + 60
    while True:
        state = health(server.endpoint)
        if state["connections"] == 0 and state["models"]["lmql-tiny"]["active_sequences"] == 0:
            return
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


def _sigterm_with_a_stalled_client(server: Server) -> None:
    sock = _stalled_client(server)
    time.sleep(2)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert server.proc.wait(timeout=GRACE_S + 7) == 0, server.output()
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {time.monotonic() - started:.0f} s after SIGTERM")
    finally:
        sock.close()  # type: ignore[attr-defined]
