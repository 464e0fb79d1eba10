"""Constraints on the built-in random backend (its byte tokens: ids 0-255 are UTF-8 bytes),
in-process: outputs checked with ``re`` and ``json``; no torch needed."""

from __future__ import annotations

import json
import re

import pytest

import lmql

pytest.importorskip("llguidance")
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def test_random_backend_follows_regex_and_schema() -> None:
    llm = lmql.model("local:random", seed=3)
    assert llm.model_info_sync()["model_info"]["extensions"]["constraints"] == ["regex", "grammar",
                                                                                "json_schema"]
    for seed in range(3):
        text = llm.generate_sync("x", max_tokens=30, regex=DATE, decoder="sample", seed=seed)
        assert re.fullmatch(DATE, text), text
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["a", "b"]}},
              "required": ["ok", "tag"], "additionalProperties": False}
    value = json.loads(llm.generate_sync("x", max_tokens=40, json_schema=schema))
    assert isinstance(value["ok"], bool) and value["tag"] in ("a", "b") and set(value) == {"ok", "tag"}
