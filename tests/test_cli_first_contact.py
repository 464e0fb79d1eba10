"""A new user's mistakes at the `lmql` command, each one `Error:` line saying what to do (issue 28)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.errors import LMQLError  # noqa: E402
from tests.conftest import Server, free_port, run_lmql, the_error  # noqa: E402

pytestmark = pytest.mark.hf


# --- point 2: an unknown hf loader key is refused before the weights load --------------------

def test_an_unknown_hf_loader_key_is_refused_before_the_weights_load() -> None:
    began = time.monotonic()
    result = run_lmql("serve-model", "--bogus-flag", "1", "--port", "0", env={"HF_HUB_OFFLINE": "1"})
    error = the_error(result)
    assert "Loaded the weights" not in result.stderr
    assert "--bogus_flag" in error
    for accepted in ("--max_batch", "--torch_dtype", "--trust_remote_code", "--num_hidden_layers"):
        assert accepted in error, error
    assert time.monotonic() - began < 120  # a bound on a hang; the weights never load


def test_from_pretrained_keys_and_config_fields_pass_the_check() -> None:
    from lmql_hf.bundled import bundled_path
    from lmql_hf.loading.loader_keys import check

    path = str(bundled_path("lmql-tiny"))
    check(path, {"torch_dtype": "float32", "attn_implementation": "eager", "use_cache": False,
                 "rms_norm_eps": 1e-5}, {})
    with pytest.raises(LMQLError, match="no option --bogus_flag, --n_ctx;"):
        check(path, {"bogus_flag": 1, "use_cache": False, "n_ctx": 8}, {})


# --- point 3: a port out of range --------------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "-5", "65536"])
def test_a_port_out_of_range_is_one_error_line_before_loading(port: str) -> None:
    result = run_lmql("serve-model", "random", "--port", port)
    assert f"port {port} is out of range: use 1-65535, or 0 for a free one" in the_error(result)
    assert "Loading" not in result.stderr


# --- point 4: generate uses the model a server serves ----------------------------------------

def test_generate_without_model_uses_the_servers_only_model(random_server: Server) -> None:
    result = run_lmql("generate", "Hi", "-e", random_server.endpoint, "--max-tokens", "4",
                      "--tokenizer", "bytes")
    assert result.returncode == 0, result.stderr
    expected = lmql.model("random", endpoint=random_server.endpoint, tokenizer="bytes").generate_sync(
        "Hi", max_tokens=4)
    assert result.stdout == "Hi" + expected + "\n"


def test_generate_with_another_model_says_to_ask_for_a_served_one(random_server: Server) -> None:
    error = the_error(run_lmql("generate", "Hi", "-m", "lmql-tiny", "-e", random_server.endpoint))
    assert "this server serves 'random', not 'lmql-tiny': ask for a model it serves" in error


# --- point 5: lmql run without a model ---------------------------------------------------------

def test_run_without_a_model_says_to_pass_model(tmp_path: Path) -> None:
    program = tmp_path / "hello.lmql"
    program.write_text('"Hello[WHO]"\n')
    error = the_error(run_lmql("run", str(program)))
    assert "names no model: pass --model NAME" in error and "--model local:lmql-tiny" in error


# --- point 6: wording ----------------------------------------------------------------------------

def test_serve_in_python_on_a_busy_port_says_port_not_the_flag() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(LMQLError) as raised:
            lmql.serve("random", host="127.0.0.1", port=port, background=True)
    message = str(raised.value)
    assert f"port {port} on 127.0.0.1 is in use" in message and "port=N" in message
    assert "--port" not in message


def test_an_endpoint_without_a_host_says_host_port() -> None:
    error = the_error(run_lmql("generate", "Hi", "--endpoint", "8401"))
    assert "the endpoint '8401' is a port without a host: use localhost:8401" in error


def test_a_refused_connection_is_told_without_aiohttps_wording() -> None:
    error = the_error(run_lmql("generate", "Hi", "-m", "random", "-e", f"127.0.0.1:{free_port()}"))
    assert error.endswith(": Connection refused"), error
    assert "ssl:default" not in error and "Connect call failed" not in error
