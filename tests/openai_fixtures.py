"""Servers and helpers for the tests of OpenAI's HTTP API (``lmql_core.openai_compat``).

The servers are conftest's session fixtures, one each for all these modules: ``tiny``, `lmql
serve-model lmql-tiny` with its defaults; ``guarded`` (``serve_guarded``), the same weights in a
folder whose tokenizer configuration has a chat template, served with a token and small limits.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RawClient, Server

pytest.importorskip("lmql_hf")
openai = pytest.importorskip("openai")

TOKEN = "s3cret-key"
MAX_BODY = 4096  # the guarded server's --max-frame-bytes
MAX_STREAMS = 4  # the guarded server's --max-streams
# a chat template in the style of Zephyr's: roles in markers, BOS first, EOS after each turn
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
                 "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def bundled_tiny() -> Path:
    from lmql_hf.bundled import resolve

    return Path(resolve("lmql-tiny"))


def chat_model(folder: Path) -> Path:
    """lmql-tiny's weights and tokenizer, with ``CHAT_TEMPLATE`` in its tokenizer configuration."""
    target = folder / "tiny-chat"
    shutil.copytree(bundled_tiny(), target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return target


def serve_guarded(folder: Path) -> Iterator[Server]:
    """For conftest's ``guarded``: lmql-tiny with a chat template, a token and small limits."""
    path = chat_model(folder)
    server = Server(str(path), "--auth-token", TOKEN, "--max-frame-bytes", str(MAX_BODY),
                    "--max-streams", str(MAX_STREAMS))
    server.model = str(path)  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.output()


def client(server: Server, key: str = "unused") -> Any:
    """The official client on ``server``; it retries nothing (a 429 or 503 shows as it is)."""
    return openai.OpenAI(base_url=f"http://{server.endpoint}/v1", api_key=key, max_retries=0, timeout=120)


def post(server: Server, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
         ) -> tuple[int, Any]:
    """A raw HTTP POST; the status and the JSON body (for errors as for answers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.endpoint}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_openai_error(status: int, body: Any, expected_status: int, words: str) -> None:
    """An error in OpenAI's shape, with the status and a message that says ``words``."""
    assert status == expected_status, body
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert words in body["error"]["message"], body


def lmtp_stream(server: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One LMTP stream's entries (text mode when ``body`` has ``text``), for comparison."""
    async def run() -> list[dict[str, Any]]:
        async with RawClient(server.endpoint) as c:
            await c.send(body.pop("command", "GENERATE"), {"stream_id": 1, **body})
            return await c.stream(1, timeout=120)
    entries = asyncio.run(run())
    assert all("error" not in e for e in entries), entries
    return entries
