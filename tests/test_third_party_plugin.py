"""A backend from another distribution, found through the `lmql` entry-point group.

The package lives in tests/plugin_example and is installed into the test environment.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import lmql
from tests.conftest import Server

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
    llm = lmql.model("local:counting:anything", start=3)
    assert llm.generate_sync("a", max_tokens=4) == "bcde"
    assert llm.model_info_sync()["model_info"]["kwargs"] == repr({"cuda": False, "dtype": None, "start": 3})


def test_served_by_lmql_serve_model() -> None:
    server = Server("counting:x")
    try:
        llm = lmql.model("counting:x", endpoint=server.endpoint)
        assert llm.generate_sync("0", max_tokens=5) == "12345"
    finally:
        assert server.stop() == 0
