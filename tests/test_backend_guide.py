"""The README's "Writing a backend" example, exactly as printed there, installed the way a plugin
is (a module and a distribution's entry point) and served by `lmql serve-model mine:...`."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.compat.readme_backend import readme_backend, with_plugin
from tests.conftest import ROOT, Server, run_lmql, the_error


async def request(endpoint: str, command: str, payload: dict) -> list[dict]:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://{endpoint}/") as ws:
        await ws.send_str(f"{command} {json.dumps({**payload, 'stream_id': 1})}")
        entries: list[dict] = []
        while not entries or entries[-1].get("finish_reason") is None and "error" not in entries[-1]:
            message = await asyncio.wait_for(ws.receive(), 30)
            entries += json.loads(message.data.split(" ", 1)[1])
        return entries


def test_the_readme_backend_serves_generates_and_scores(tmp_path: Path) -> None:
    server = Server("mine:anything", "--confidence", "5", env=with_plugin(tmp_path))
    try:
        generated = asyncio.run(request(server.endpoint, "GENERATE", {
            "model": "mine:anything", "prompt": [97], "max_tokens": 3, "temperature": 0}))
        scored = asyncio.run(request(server.endpoint, "SCORE", {
            "model": "mine:anything", "prompt": [97], "scored": [98, 120]}))
    finally:
        assert server.stop() == 0, server.output()
    assert [e["token"] for e in generated] == [98, 99, 100]
    assert generated[-1]["finish_reason"] == "length"
    total = math.log(math.exp(5.0) + 255)  # one logit of 5 (--confidence), 255 of 0
    assert [e["logprob"] for e in scored] == pytest.approx([5.0 - total, 0.0 - total], abs=1e-4)


def test_the_readme_backend_serves_text_with_the_tokenizer_it_registered(tmp_path: Path) -> None:
    """The server tokenizes with register(..., tokenizer=next_byte_tokenizer): text mode works, and a
    client without the plugin gets that tokenizer from the server (TOKENIZER)."""
    import lmql

    server = Server("mine:anything", env=with_plugin(tmp_path))
    try:
        texts = asyncio.run(request(server.endpoint, "GENERATE", {
            "model": "mine:anything", "text": "ab", "max_tokens": 3, "temperature": 0}))
        llm = lmql.model("mine:anything", endpoint=server.endpoint)
        generated = llm.generate_sync("ab", max_tokens=3)
        encoded = llm.tokenizer.encode("é")
    finally:
        assert server.stop() == 0, server.output()
    assert [e["token"] for e in texts] == [99, 100, 101]
    assert "".join(e["text"] for e in texts) == "cde"
    assert generated == "cde"
    assert encoded == list("é".encode())  # the UTF-8 bytes: the README's tokenizer, not one found here


def test_the_readme_backend_runs_in_process_through_local(tmp_path: Path) -> None:
    """``local:`` loads the plugin in the client's own process: same tokens and log-probs as served."""
    program = ("import json, lmql\n"
               "m = lmql.model('local:mine:anything', confidence=5)\n"
               "scored = m.score_sync('a', ['b'])\n"
               "print(json.dumps([m.generate_sync('ab', max_tokens=3), scored.token_scores[0].tolist()]))\n")
    env = {**os.environ, **with_plugin(tmp_path)}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    generated, scores = json.loads(result.stdout.splitlines()[-1])
    assert generated == "cde"
    assert scores == pytest.approx([5.0 - math.log(math.exp(5.0) + 255)], abs=1e-4)


def test_the_readme_error_for_an_unknown_option_is_the_one_printed(tmp_path: Path) -> None:
    printed = re.search(r"is one\s+line, `(Error: .*?)`", (ROOT / "README.md").read_text(), re.S)
    assert printed, "the README's example error is missing"
    result = run_lmql("serve-model", "mine:anything", "--port", "0", "--confidance", "5", env=with_plugin(tmp_path))
    assert the_error(result) == " ".join(printed.group(1).split())


def test_the_readme_backend_passes_check_backend() -> None:
    from lmql_core.plugin import check_backend

    module: dict = {}
    exec(compile(readme_backend(), "mine_backend.py", "exec"), module)
    outcome = check_backend(module["NextByte"], "anything", tokenizer=module["next_byte_tokenizer"])
    assert outcome["score"] == outcome["batching"] == outcome["release"] == outcome["tokenizer"] == "passed"


def test_the_compat_runs_byte_tokenizer_gives_the_backends_ids(tmp_path: Path) -> None:
    """LMQL 0.7.3's client talks to the README backend through tokenizer files (the compat run's
    `readme_backend.write_byte_tokenizer`): their ids must be the text's UTF-8 bytes, as the
    backend's own BytesTokenizer gives them."""
    from lmql_core.loading.tokenizer import JsonTokenizer
    from tests.compat.readme_backend import write_byte_tokenizer

    tokenizer = JsonTokenizer.from_file(write_byte_tokenizer(tmp_path) / "tokenizer.json")
    for text in ("ab", " leading space", "naïve café 日本 🙂", "\x00\x7f\n"):
        assert tokenizer.encode(text, add_special_tokens=False) == list(text.encode("utf-8"))
        assert tokenizer.decode(list(text.encode("utf-8"))) == text
    assert tokenizer.eos_token_id == 256
