"""Clients that need no tokenizer files: the server hands its tokenizer over; text mode."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.errors import TokenizerMismatch  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import RawClient, Server  # noqa: E402
from tests.lmtp_proxy import RecordingProxy  # noqa: E402

pytestmark = pytest.mark.hf
TEXT = "Naïve café — 日本語 🙂 and so"


def test_model_info_advertises_the_extensions(tiny_server: Server) -> None:
    info = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint).model_info_sync()["model_info"]
    llm = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    assert info["extensions"] == {"tokenizer": llm.tokenizer.fingerprint(), "text": True, "cancel": True,
                                  "constraints": ["regex", "grammar", "json_schema"], "template": 1,
                                  "chat": True}


def test_client_without_tokenizer_files_uses_the_servers(tiny_server: Server, tmp_path: Path) -> None:
    """The first client process fetches the server's tokenizer (TOKENIZER, once) and caches it;
    the second reads the cache and never asks (seen in the frames it sends through a proxy)."""
    expected = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint).generate_sync(TEXT, max_tokens=20)
    proxy = RecordingProxy(tiny_server.endpoint)
    script = textwrap.dedent(f"""
        import lmql
        llm = lmql.model("lmql-tiny", endpoint="{proxy.endpoint}")
        print(repr(llm.generate_sync({TEXT!r}, max_tokens=20)))
    """)
    # only the core's plugins: no lmql-hf, so no local way to find lmql-tiny's tokenizer
    env = {**os.environ, "LMQL_LOAD_PLUGINS": "", "LMQL_CACHE_DIR": str(tmp_path)}
    try:
        for asked in (1, 0):  # the second run reads the tokenizer from the cache
            first = len(proxy.sent)
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    env=env, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == repr(expected)
            assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 1
            commands = proxy.commands()[first:]
            assert commands.count("TOKENIZER") == asked and "GENERATE" in commands
    finally:
        proxy.close()


def test_a_matching_tokenizer_passes_the_check(tiny_server: Server) -> None:
    llm = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint, tokenizer=str(bundled_path("lmql-tiny")))
    assert llm.generate_sync("Once upon a time", max_tokens=5)


def test_a_different_tokenizer_is_refused(tiny_server: Server, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(["some other text entirely"] * 10, trainers.BpeTrainer(vocab_size=300))
    other.save(str(tmp_path / "tokenizer.json"))
    llm = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint, tokenizer=str(tmp_path))
    with pytest.raises(TokenizerMismatch, match="does not match the one 'lmql-tiny' is served with"):
        llm.generate_sync("Once upon a time", max_tokens=5)


async def _stream(endpoint: str, command: str, body: dict) -> list[dict]:
    async with RawClient(endpoint) as c:
        await c.send(command, {"model": "lmql-tiny", "stream_id": 1, **body})
        return await c.stream(1)


def reference_prompt(text: str) -> list[int]:
    """BOS and the text's tokens, by the tokenizers library from lmql-tiny's own files."""
    from tokenizers import Tokenizer

    folder = bundled_path("lmql-tiny")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tokenizer.token_to_id(json.loads((folder / "tokenizer_config.json").read_text())["bos_token"])
    return [bos, *tokenizer.encode(text, add_special_tokens=False).ids]


def test_text_mode_round_trips_non_ascii(tiny_server: Server) -> None:
    llm = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    prompt = reference_prompt(TEXT)
    assert llm.encode_prompt(TEXT) == prompt  # one BOS, then the text
    entries = asyncio.run(_stream(tiny_server.endpoint, "GENERATE", {"text": TEXT, "max_tokens": 30}))
    by_ids = asyncio.run(_stream(tiny_server.endpoint, "GENERATE", {"prompt": prompt, "max_tokens": 30}))
    assert [e["token"] for e in entries] == [e["token"] for e in by_ids]
    # the log-probabilities tell the prompt the model saw: a doubled BOS shifts every one of them
    assert [e["logprob"] for e in entries] == pytest.approx([e["logprob"] for e in by_ids], abs=1e-5)
    text = "".join(e["text"] for e in entries)
    assert text == llm.generate_sync(TEXT, max_tokens=30)
    assert all("\ufffd" not in e["text"] for e in entries)
    # the prompt itself, pushed through text mode's decoder token by token, survives intact
    echoed = asyncio.run(_stream(tiny_server.endpoint, "SCORE", {"text": "x", "scored_text": TEXT}))
    assert llm.tokenizer.decode([e["token"] for e in echoed]) == TEXT


def test_text_mode_scores_equal_token_scores(tiny_server: Server) -> None:
    llm = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
    entries = asyncio.run(_stream(tiny_server.endpoint, "SCORE",
                                  {"text": "The cat sat on the", "scored_text": " mat"}))
    expected = llm.score_sync("The cat sat on the", [" mat"]).token_scores[0]
    assert [e["logprob"] for e in entries] == pytest.approx(expected, abs=1e-5)


def test_tokenizer_command_answers(tiny_server: Server) -> None:
    async def scenario() -> tuple:
        async with RawClient(tiny_server.endpoint) as c:
            await c.send("TOKENIZER", {"model": "lmql-tiny", "stream_id": 3})
            return await c.frame()

    command, [answer] = asyncio.run(scenario())
    assert command == "MSG" and answer["stream_id"] == 3
    spec = answer["tokenizer"]
    assert json.loads(spec["tokenizer_json"])["model"]["type"] == "BPE"
    assert (spec["bos_token_id"], spec["eos_token_id"]) == (1, 2)


def tiny_without_bos(folder: Path) -> Path:
    """lmql-tiny's files, its vocabulary unchanged, served with no BOS token."""
    import shutil

    copy = Path(shutil.copytree(bundled_path("lmql-tiny"), folder / "tiny-without-bos"))
    for name in ("config.json", "generation_config.json"):
        config = json.loads((copy / name).read_text())
        config["bos_token_id"] = None
        (copy / name).write_text(json.dumps(config))
    return copy


def test_the_tokenizer_cache_keeps_bos_apart(tiny_server: Server, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The same vocabulary served without BOS, asked with a warm cache: no BOS before the prompt
    (the cache was keyed by the vocabulary alone, and the warm client prepended BOS=1)."""
    monkeypatch.setenv("LMQL_CACHE_DIR", str(tmp_path / "cache"))
    no_bos = tiny_without_bos(tmp_path)
    no_bos_server = Server(str(no_bos))
    try:
        with_bos = lmql.model("lmql-tiny", endpoint=tiny_server.endpoint)
        without = lmql.model(str(no_bos), endpoint=no_bos_server.endpoint)
        words = with_bos.tokenizer.encode("hi", add_special_tokens=False)
        assert with_bos.encode_prompt("hi") == [1, *words]  # warms the cache
        assert without.encode_prompt("hi") == words
        assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 2
    finally:
        assert no_bos_server.stop() == 0


def test_incremental_decoding_gives_invalid_bytes_out_after_a_bounded_wait() -> None:
    # bytes that never form a character (a random-weight model's) are held at most HELD tokens,
    # and all text still adds up to the tokenizers library's decode of the whole stream
    from tokenizers import Tokenizer as RustTokenizer

    from lmql_core.loading.tokenizer import HELD, IncrementalDecoder, JsonTokenizer

    path = Path(bundled_path("lmql-tiny")) / "tokenizer.json"
    tokenizer = JsonTokenizer.from_file(path)
    rust = RustTokenizer.from_file(str(path))
    continuation = [rust.token_to_id(t) for t in ("Ġ", "Ã")]  # "Ã" alone: a lead byte, never completed
    assert None not in continuation
    lead = continuation[1]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(lead) for _ in range(3 * HELD)]
    assert sum(1 for p in pieces if p) >= 2  # given out while the stream goes on, not only at its end
    pieces.append(decoder.flush())
    assert "".join(pieces) == rust.decode([lead] * (3 * HELD), skip_special_tokens=False)


def test_incremental_decoding_passes_over_ids_without_text(tmp_path: Path) -> None:
    # a folder with a model's config but no vocabulary (the benchmarks' random-weight models):
    # transformers' tokenizer knows one token, every other id decodes to nothing; the decoder
    # passes them over instead of re-decoding a window that grows with the stream
    from transformers import AutoTokenizer, GPT2Config

    from lmql_core.loading.tokenizer import IncrementalDecoder
    from lmql_hf.loading.tokenizer import load_hf_tokenizer

    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(tmp_path)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer = load_hf_tokenizer(str(tmp_path))
    decoder = IncrementalDecoder(tokenizer)
    ids = [7 + i for i in range(100)] + [0] + [500, 0]
    pieces = []
    for token in ids:
        pieces.append(decoder.push(token))
        assert len(decoder.ids) - decoder.context <= 2  # the window decoded: the last token and one before
    pieces.append(decoder.flush())
    assert "".join(pieces) == reference.decode(ids) == "<|endoftext|>" * 2
    assert pieces[100] == "<|endoftext|>"


def test_tokens_decoded_together_give_the_text_of_all(tmp_path: Path) -> None:
    # a stream's tokens handed over in batches of any size (a paced OpenAI stream's) decode to
    # the tokenizers library's text of the whole, characters never split
    import random

    from tokenizers import Tokenizer as RustTokenizer

    from lmql_core.loading.tokenizer import IncrementalDecoder, JsonTokenizer

    path = Path(bundled_path("lmql-tiny")) / "tokenizer.json"
    tokenizer, rust = JsonTokenizer.from_file(path), RustTokenizer.from_file(str(path))
    ids = rust.encode(TEXT * 3, add_special_tokens=False).ids
    rng = random.Random(0)
    for _ in range(20):
        decoder, pieces, start = IncrementalDecoder(tokenizer), [], 0
        while start < len(ids):
            size = rng.randrange(1, 25)  # more than HELD at times
            pieces.append(decoder.extend(ids[start : start + size]))
            start += size
        pieces.append(decoder.flush())
        assert "".join(pieces) == rust.decode(ids, skip_special_tokens=False) == TEXT * 3
        assert not any("\ufffd" in p for p in pieces)


def test_the_hf_tokenizer_decodes_as_transformers() -> None:
    # the server's transformers tokenizer decodes through its Rust backend (a tenth of the cost)
    # where that is transformers' text: random ids, special tokens among them
    import random

    from transformers import AutoTokenizer

    from lmql_hf.loading.tokenizer import TransformersTokenizer

    reference = AutoTokenizer.from_pretrained(bundled_path("lmql-tiny"))
    tokenizer = TransformersTokenizer(reference)
    assert tokenizer._rust is not None  # the fast path is the one checked here
    rng = random.Random(0)
    for _ in range(500):
        ids = [rng.randrange(len(reference)) for _ in range(rng.randrange(1, 6))]
        assert tokenizer.decode(ids) == reference.decode(ids), ids
