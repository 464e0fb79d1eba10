"""A long-lived client and a server restarted with another model behind the same endpoint: what
the client learnt over the old connection (MODEL_INFO, the tokenizer) is asked again (issue 28,
point 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from tests.conftest import Server  # noqa: E402

pytestmark = pytest.mark.hf


def reference_ids(folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def swap_tokens(folder: Path, a: str, b: str) -> None:
    """Another model: lmql-tiny's weights with two tokens' ids swapped in its vocabulary."""
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(spec), encoding="utf-8")


def test_a_client_notices_a_server_restarted_with_another_model(tmp_path: Path) -> None:
    from lmql_hf.bundled import bundled_path

    folder = tmp_path / "model"
    shutil.copytree(str(bundled_path("lmql-tiny")), folder)
    env = {"HF_HUB_OFFLINE": "1"}
    first = Server(str(folder), "--warm_up", "False", env=env)
    llm = lmql.model(str(folder), endpoint=first.endpoint)
    try:
        before = llm.encode_prompt("Hi")
        assert before[1:] == reference_ids(folder, "Hi")
        llm.generate_sync("Hi", max_tokens=2)
    finally:
        assert first.stop() == 0
    swap_tokens(folder, "H", "i")
    second = Server(str(folder), "--warm_up", "False", env=env, port=first.port)
    try:
        llm.generate_sync("Hi", max_tokens=2)  # the same LLM, over a new connection
        after = llm.encode_prompt("Hi")
        assert after[1:] == reference_ids(folder, "Hi") == before[:0:-1]  # "i", "H": swapped
        info = llm.model_info_sync()["model_info"]
        assert llm.tokenizer.fingerprint() == info["extensions"]["tokenizer"]
    finally:
        assert second.stop() == 0
