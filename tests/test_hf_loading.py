"""Loading the HF backend's bundled lmql-tiny: its files, the server's default model and how it
starts and stops, loader arguments, and the clear errors of loads that cannot work here."""

from __future__ import annotations

import re
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from lmql_hf.bundled import bundled_path  # noqa: E402
from tests.conftest import Server  # noqa: E402

pytestmark = pytest.mark.hf


def test_bundled_model_is_small_and_complete() -> None:
    path = bundled_path("lmql-tiny")
    assert path is not None
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) <= 8 * 1024 * 1024


def test_serve_model_without_argument_serves_lmql_tiny_and_ends_quietly_on_ctrl_c() -> None:
    """Its start-up time is shown; Ctrl-C ends it with nothing printed after "Shutting down" (the
    objects frozen for serving once stayed frozen at exit, and triton's bindings, where installed,
    printed ~30 lines of "leaked instance")."""
    server = Server(None)
    try:
        info = lmql.model("lmql-tiny", endpoint=server.endpoint).model_info_sync()
        assert info["model"] == "lmql-tiny"
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=30) == 0
        output = server.output()
        assert re.search(r"Ready: lmql-tiny on cpu, float32 \(loaded in [0-9.]+ s\)", output), output
        assert output.rstrip().splitlines()[-1].startswith("Shutting down"), output
    finally:
        assert server.stop() == 0


def test_loader_arguments_reach_from_pretrained() -> None:
    llm = lmql.model("local:lmql-tiny", dtype="bfloat16", attn_implementation="eager")
    info = llm.model_info_sync()["model_info"]
    assert info["dtype"] == "bfloat16"
    assert "attn_implementation='eager'" in info["constructor"]
    assert llm.generate_sync("Once upon a time", max_tokens=5)


def test_quantized_dtype_without_bitsandbytes_is_a_clear_error() -> None:
    pytest.importorskip("lmql_hf")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    with pytest.raises(LMQLError, match="needs bitsandbytes: pip install bitsandbytes"):
        lmql.model("local:lmql-tiny", dtype="8bit").generate_sync("Hi", max_tokens=1)  # loads at first use


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LMQLError, match="--cuda was given but torch sees no CUDA device"):
        lmql.model("local:lmql-tiny", cuda=True).generate_sync("Hi", max_tokens=1)  # loads at first use
