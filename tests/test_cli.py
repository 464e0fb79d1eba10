"""The `lmql` command as a new user meets it: real processes, real sockets, the bundled model."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

import lmql  # noqa: E402
from lmql_core.cli import DEFAULT_MODEL, model_and_loader_args  # noqa: E402
from tests.conftest import LMQL, ROOT, Server, free_port, run_lmql, the_error  # noqa: E402

pytestmark = pytest.mark.hf


@contextlib.contextmanager
def port_taken() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


# --- serve-model: loader options without a model name (point 1) ----------------------------

def test_loader_options_alone_serve_lmql_tiny_with_them() -> None:
    server = Server(None, "--torch_dtype", "float16", "--trust_remote_code")
    try:
        info = lmql.model(DEFAULT_MODEL, endpoint=server.endpoint).model_info_sync()["model_info"]
        assert info["model"] == DEFAULT_MODEL
        assert info["loader_kwargs"]["trust_remote_code"] == "True"
        assert info["loader_kwargs"]["torch_dtype"] == "'float16'"
        assert info["dtype"] == "float16"
    finally:
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize(("model", "extra", "expected"), [
    ("--trust_remote_code", [], (DEFAULT_MODEL, ["--trust_remote_code"])),
    ("--torch_dtype", ["float16"], (DEFAULT_MODEL, ["--torch_dtype", "float16"])),
    ("gpt2", ["--n_ctx", "8"], ("gpt2", ["--n_ctx", "8"])),
])
def test_an_option_taken_for_the_model_goes_back_to_the_loader(
        model: str, extra: list[str], expected: tuple[str, list[str]]) -> None:
    assert model_and_loader_args(model, extra) == expected


# --- serve-model: one Error line for the common mistakes (point 2) -------------------------

def test_an_unknown_model_is_one_error_line() -> None:
    error = the_error(run_lmql("serve-model", "no-such-model-xyz", "--port", "0",
                               env={"HF_HUB_OFFLINE": "1"}))
    assert "'no-such-model-xyz' is not a local folder and not in the Hugging Face cache" in error
    assert "download it first" in error


def test_a_missing_folder_is_one_error_line(tmp_path: Path) -> None:
    error = the_error(run_lmql("serve-model", str(tmp_path / "nothing"), "--port", "0"))
    assert f"no model folder at '{tmp_path / 'nothing'}'" in error


def test_an_uncached_hub_model_with_the_hub_unreachable_fails_at_once(tmp_path: Path) -> None:
    """No HF_HUB_OFFLINE: the hub (here a closed loopback port) is probed once, not retried."""
    hub = f"http://127.0.0.1:{free_port()}"
    env = {"HF_ENDPOINT": hub, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "0"}
    error = the_error(run_lmql("serve-model", "some-org/some-model", "--port", "0", env=env,
                               timeout=60))
    assert f"the hub ({hub}) is unreachable: download it first" in error


def test_a_port_in_use_fails_before_the_model_loads() -> None:
    with port_taken() as port:
        result = run_lmql("serve-model", "--host", "127.0.0.1", "--port", str(port))
    error = the_error(result)
    assert f"port {port} on 127.0.0.1 is in use" in error and "--port" in error
    assert "Loading" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--torch_dtype", "notatype"], "unknown --torch_dtype 'notatype'; use auto or one of float16"),
    (["--no_such_arg", "3"], "the hf backend has no option --no_such_arg; its options: --max_batch"),
    (["--dtype", "float7"], "unknown --dtype 'float7'"),
])
def test_a_bad_loader_value_is_one_error_line(args: list[str], message: str) -> None:
    assert message in the_error(run_lmql("serve-model", "--port", "0", *args))


# --- serve-model: Ready once serving (point 3) ---------------------------------------------

def _serve_until_ready(model: str, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """``lmql serve-model MODEL`` on ``port``, and the lines it printed up to "Ready"."""
    proc = subprocess.Popen([*LMQL, "serve-model", model, "--host", "127.0.0.1", "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("Ready"):
            break
    return proc, lines


def test_ready_is_printed_once_the_socket_serves_with_how_to_stop() -> None:
    port = free_port()
    proc, lines = _serve_until_ready("random", port)
    try:
        ready = lines[-1]
        assert f"serving LMTP on ws://127.0.0.1:{port}/" in ready and "Ctrl-C or SIGTERM stops it" in ready
        # nothing waited for: the socket serves the moment Ready is out
        info = lmql.model("random", endpoint=f"127.0.0.1:{port}").model_info_sync()["model_info"]
        assert info["model"] == "random"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_the_cpu_server_warms_up_before_ready_and_says_how_long() -> None:
    """The first request after Ready on the CPU paid the libraries' lazy set-up (issue #19)."""
    port = free_port()
    proc, lines = _serve_until_ready("lmql-tiny", port)
    try:
        assert any(line.startswith("Warmed up in") for line in lines[:-1]), lines
        info = lmql.model("lmql-tiny", endpoint=f"127.0.0.1:{port}").model_info_sync()["model_info"]
        assert info["devices"] == ["cpu"] and 0 < info["warm_up_s"] < 5
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_the_demo_refuses_a_port_in_use() -> None:
    with port_taken() as port:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "PORT": str(port)})
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr and "PORT=" in result.stderr
    assert "Once upon a time" not in result.stdout


# --- generate, help, backends (point 4) ----------------------------------------------------

def test_generate_shows_a_server_error_on_its_own_line(random_server: Server) -> None:
    result = subprocess.run([*LMQL, "generate", "Hi", "-m", "lmql-tiny", "-e", random_server.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.startswith("Error:"), result.stdout
    assert "this server serves 'random', not 'lmql-tiny'" in result.stdout


def test_generate_an_unreachable_server_is_one_error_line() -> None:
    result = run_lmql("generate", "Hi", "-e", f"127.0.0.1:{free_port()}")
    assert "cannot reach the LMTP server" in the_error(result)
    assert result.stdout == ""


def test_generate_streams_the_continuation_after_the_prompt(random_server: Server) -> None:
    result = run_lmql("generate", "Hi", "-m", "random", "-e", random_server.endpoint,
                      "--max-tokens", "4", "--tokenizer", "bytes")
    assert result.returncode == 0, result.stderr
    expected = lmql.model("random", endpoint=random_server.endpoint, tokenizer="bytes").generate_sync(
        "Hi", max_tokens=4)
    assert result.stdout == "Hi" + expected + "\n"


def test_generate_refuses_local_with_an_endpoint() -> None:
    error = the_error(run_lmql("generate", "Hi", "-m", "local:random", "--endpoint", "localhost:9"))
    assert "'local:random' loads the model in this process" in error and "drop" in error


def test_serve_model_help_lists_the_backends_own_options() -> None:
    result = run_lmql("serve-model", "--help")
    assert result.returncode == 0, result.stderr
    hf_section = result.stdout.split("Options of the hf backend (after MODEL):")[1]
    for option in ("--max_batch", "--max_seq_len", "--cuda_graphs", "--progress"):
        assert option in hf_section
    assert "Options of the random backend (after MODEL):" in result.stdout
    assert "--seed VALUE" in result.stdout


def test_backends_fit_80_columns_and_name_the_bundled_model() -> None:
    result = run_lmql("backends")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    hf = lines.index("hf (default)")
    assert lines[hf + 2] == "    models: lmql-tiny"


def test_backends_say_how_to_install_a_missing_plugin_from_the_checkout() -> None:
    result = run_lmql("backends", env={"LMQL_LOAD_PLUGINS": ""})
    assert "    pip install lmql-hf" in result.stdout
    assert "    from a checkout of lmql-core: pip install ./plugins/hf" in result.stdout


# --- quiet in-process loading (point 5) ----------------------------------------------------

@pytest.mark.parametrize("progress", [False, True])
def test_loading_in_process_shows_a_progress_bar_only_when_asked(progress: bool) -> None:
    script = (f"import lmql; lmql.model('local:lmql-tiny', progress={progress})"
              ".generate_sync('Hi', max_tokens=2)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("Loading weights" in result.stderr) == progress, result.stderr
