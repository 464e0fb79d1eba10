"""Model identifiers, loader arguments and the errors for backends that are not installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmql_core.base.options import parse_loader_args, parse_value
from lmql_core.errors import BackendNotInstalled, LMQLError
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.plugin_manager import backend_for_name


@pytest.mark.parametrize(
    ("identifier", "local", "backend", "model", "served"),
    [
        ("gpt2", False, "hf", "gpt2", "gpt2"),
        ("local:gpt2", True, "hf", "gpt2", "gpt2"),
        ("random", False, "random", "random", "random"),
        ("local:random", True, "random", "random", "random"),
        ("llama.cpp:/models/x.gguf", False, "llama.cpp", "/models/x.gguf", "llama.cpp:/models/x.gguf"),
        ("local:llama.cpp:/m/x.gguf", True, "llama.cpp", "/m/x.gguf", "llama.cpp:/m/x.gguf"),
        ("meta-llama/Llama-3.2-1B", False, "hf", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
    ],
)
def test_parse_model_id(identifier: str, local: bool, backend: str, model: str, served: str) -> None:
    parsed = parse_model_id(identifier)
    assert (parsed.local, parsed.backend, parsed.model, parsed.served_name) == (local, backend, model, served)
    assert str(parsed) == identifier


def test_explicit_backend_applies_to_unprefixed_names_only() -> None:
    assert parse_model_id("some-model", backend="random").backend == "random"
    assert parse_model_id("llama.cpp:/x.gguf", backend="random").backend == "llama.cpp"


def test_empty_identifier_is_an_error() -> None:
    with pytest.raises(LMQLError, match="Empty model identifier"):
        parse_model_id("  ")


@pytest.mark.parametrize(
    ("text", "value"),
    [("True", True), ("false", False), ("None", None), ("42", 42), ("-3", -3), ("0.5", 0.5),
     ("1e-3", 0.001), ("sdpa", "sdpa"), ("main", "main"), ('{"0": "2GiB"}', {"0": "2GiB"}),
     ("[1, 2]", [1, 2]), ("{oops", "{oops")],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_parse_loader_args() -> None:
    args = ["--trust_remote_code", "True", "--n-ctx=4096", "--revision", "v2", "--low_cpu_mem_usage",
            "--rope_scale", "0.5"]
    assert parse_loader_args(args) == {
        "trust_remote_code": True, "n_ctx": 4096, "revision": "v2", "low_cpu_mem_usage": True,
        "rope_scale": 0.5,
    }


def test_loader_args_must_be_options() -> None:
    with pytest.raises(LMQLError, match="Expected a --KEY VALUE pair"):
        parse_loader_args(["stray"])


def test_unknown_backend_names_lmql_backends() -> None:
    with pytest.raises(BackendNotInstalled, match="lmql backends"):
        backend_for_name("no-such-backend")


@pytest.mark.parametrize(("model", "distribution"), [("gpt2", "lmql-hf"), ("llama.cpp:/x.gguf", "lmql-llamacpp")])
def test_missing_backend_names_its_distribution(model: str, distribution: str) -> None:
    """With third-party plugins switched off, the hf and llama.cpp backends are missing."""
    result = subprocess.run(
        [sys.executable, "-m", "lmql_core", "serve-model", model, "--port", "0"],
        capture_output=True, text=True, env={**os.environ, "LMQL_LOAD_PLUGINS": ""}, timeout=60,
    )
    assert result.returncode == 1
    assert f"pip install {distribution}" in result.stderr
    checkout = {"lmql-hf": "./plugins/hf", "lmql-llamacpp": "./plugins/llamacpp"}[distribution]
    assert f"from a checkout of lmql-core: pip install {checkout}" in result.stderr
    assert "Traceback" not in result.stderr
