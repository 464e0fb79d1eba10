"""Shared fixtures: real server processes on free loopback ports, and raw LMTP connections."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServerProcess, free_port  # noqa: F401  (free_port: imported from here too)
from tests.skip_report import (  # noqa: F401  (hooks: loud module skips, strict in CI)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent


def read_metric(text: str, name: str, model: str = "random", label: str | None = "model") -> float:
    """One model's value of a Prometheus metric (a counter may carry the ``_total`` suffix); with
    another ``label``, the value where that label is ``model``; with None, an unlabelled one."""
    selector = f'{{{label}="{model}"}}' if label else ""
    match = re.search(rf'^{name}(?:_total)?{re.escape(selector)} ([0-9.e+-]+)$', text, re.M)
    assert match, f"{name} not in metrics:\n{text}"
    return float(match.group(1))


def server_metric(server: Server, name: str, model: str = "random") -> float:
    """One model's value of a metric, read from a running server's /metrics."""
    with urllib.request.urlopen(f"http://{server.endpoint}/metrics", timeout=10) as response:
        return read_metric(response.read().decode(), name, model)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll until ``condition()`` holds; fail after ``timeout`` seconds (a bound on a hang, not a
    speed requirement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


class StreamEvents:
    """An engine sink for ``streams`` streams: each stream's events (``TokenEvent``s) by id;
    ``done`` is set once every stream ended (a finish reason or an error)."""

    def __init__(self, streams: int) -> None:
        self.events: dict[Any, list[Any]] = {}
        self.left, self.done = streams, threading.Event()

    def __call__(self, events: list[Any]) -> None:
        for e in events:
            self.events.setdefault(e.stream_id, []).append(e)
            if e.finish_reason is not None or e.error:
                self.left -= 1
        if self.left <= 0:
            self.done.set()


LMQL = [sys.executable, "-m", "lmql_core"]


def run_lmql(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LMQL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


def the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one `Error:` line of a failed command (and no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


class Server(ServerProcess):
    """A real `lmql serve-model` process, ready when it takes connections."""

    def __init__(self, model: str | None, *args: str, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        port = port or free_port()
        command = [sys.executable, "-m", "lmql_core", "serve-model", *([model] if model else []),
                   "--host", host, "--port", str(port), *args]
        super().__init__("lmql-server", command, port, env={**os.environ, **(env or {})})
        self.wait_ready(self.accepts_connections, timeout=180)


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    """lmql-tiny in transformers, and its tokenizer: the reference our query runtime is held to."""
    transformers = pytest.importorskip("transformers")
    from lmql_hf.bundled import bundled_path

    path = bundled_path("lmql-tiny")
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[Server]:
    """One `lmql serve-model lmql-tiny` for every module that needs a plain one (a server with
    options of its own is the test's); stopped cleanly at the end. Tests read its counters as
    differences, since the modules before them used it too."""
    pytest.importorskip("lmql_hf")
    server = Server("lmql-tiny")
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="session")
def tiny(tiny_server: Server) -> Server:
    """``tiny_server``, under the name the OpenAI test modules give it."""
    return tiny_server


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """lmql-tiny with a chat template, a token and small limits (``openai_fixtures.serve_guarded``),
    one for every OpenAI test module: none reads its counters or leaves a stream open on it."""
    from tests.openai_fixtures import serve_guarded

    yield from serve_guarded(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="session")
def random_server() -> Iterator[Server]:
    server = Server("random", "--seed", "7")
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="session")
def token_server() -> Iterator[Server]:
    """A random model behind ``--auth-token s3cret``, for every module that tests the token."""
    server = Server("random", "--auth-token", "s3cret")
    yield server
    assert server.stop() == 0, server.output()


class RawClient:
    """A bare websocket speaking LMTP frames, for checking the wire itself."""

    def __init__(self, endpoint: str) -> None:
        import aiohttp

        self.endpoint = endpoint
        self.session = aiohttp.ClientSession()
        self.ws: Any = None

    async def __aenter__(self) -> RawClient:
        self.ws = await self.session.ws_connect(f"ws://{self.endpoint}/")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()
        await self.session.close()

    async def send(self, command: str, payload: Any) -> None:
        await self.ws.send_str(f"{command} {json.dumps(payload)}")

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def frame(self, timeout: float = 30) -> tuple[str, Any]:
        import asyncio

        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        command, _, body = msg.data.partition(" ")
        return command, json.loads(body)

    async def stream(self, stream_id: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Entries of one stream until it finishes or errs (other streams' entries are dropped)."""
        entries: list[dict[str, Any]] = []
        while True:
            _, payload = await self.frame(timeout)
            for entry in payload:
                if entry.get("stream_id") != stream_id:
                    continue
                entries.append(entry)
                if "error" in entry or entry.get("finish_reason") is not None:
                    return entries

    async def collect(self, stream_ids: set[Any], timeout: float = 60) -> dict[Any, list[dict[str, Any]]]:
        """Entries of several interleaved streams, each until it ends."""
        result: dict[Any, list[dict[str, Any]]] = {sid: [] for sid in stream_ids}
        open_ids = set(stream_ids)
        while open_ids:
            _, payload = await self.frame(timeout)
            assert isinstance(payload, list), payload
            for entry in payload:
                sid = entry.get("stream_id")
                if sid in open_ids:
                    result[sid].append(entry)
                    if "error" in entry or entry.get("finish_reason") is not None:
                        open_ids.discard(sid)
        return result


async def first_tokens(endpoint: str, model: str, requests: list[dict[str, Any]], wave: int = 1000) -> list[int]:
    """The first token of each GENERATE request, one stream each, sent over one connection in
    waves of ``wave`` streams (servers allow 1024 at a time)."""
    tokens: list[int] = []
    async with RawClient(endpoint) as c:
        for start in range(0, len(requests), wave):
            batch = dict(enumerate(requests[start:start + wave], start=start))
            for sid, request in batch.items():
                await c.send("GENERATE", {"model": model, "stream_id": sid, "max_tokens": 1, **request})
            entries = await c.collect(set(batch), timeout=120)
            assert all("error" not in e[0] for e in entries.values()), entries
            tokens.extend(entries[sid][0]["token"] for sid in batch)
    return tokens


@pytest.fixture(scope="session")
def small_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer GPT-2 with random weights (tanh GELU), built here."""
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, bos_token_id=999, eos_token_id=999)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):  # zeros by default: a stand-in losing one would not show
                parameter.normal_(std=0.1)
    model.save_pretrained(path)
    return str(path)
