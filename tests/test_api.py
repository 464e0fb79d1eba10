"""The Python API: lmql.model / generate / score, sync and async, in and out of event loops."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap

import pytest

import lmql
import lmql_core.api
from lmql_core.api.scoring import ScoringResult
from lmql_core.errors import ServerError
from tests.conftest import Server
from tests.lmtp_proxy import RecordingProxy


def test_served_and_in_process_agree(random_server: Server) -> None:
    served = lmql.model("random", endpoint=random_server.endpoint)
    local = lmql.model("local:random", seed=7)
    for prompt in ["Hello", "The cat", "ünïcødé ✓"]:
        assert served.generate_sync(prompt, max_tokens=10) == local.generate_sync(prompt, max_tokens=10)
        served_scores = [list(s) for s in served.score_sync(prompt, ["a", "bc"]).token_scores]
        local_scores = [list(s) for s in local.score_sync(prompt, ["a", "bc"]).token_scores]
        assert [pytest.approx(s, abs=1e-6) for s in local_scores] == served_scores


def test_async_api_and_sync_api_inside_a_running_loop(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    expected = llm.generate_sync("abc", max_tokens=6)

    async def main() -> tuple[str, str, list]:
        from_async = await llm.generate("abc", max_tokens=6)
        from_sync = llm.generate_sync("abc", max_tokens=6)  # blocks this loop, must not deadlock
        many = await asyncio.gather(*(llm.generate("abc", max_tokens=6) for _ in range(10)))
        return from_async, from_sync, many

    from_async, from_sync, many = asyncio.run(main())
    assert from_async == from_sync == expected
    assert many == [expected] * 10


def test_default_model_and_top_level_functions(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    lmql.set_default_model(llm)
    try:
        assert lmql.generate_sync("xy", max_tokens=4) == llm.generate_sync("xy", max_tokens=4)
        assert list(lmql.score_sync("xy", ["z"]).scores()) == list(llm.score_sync("xy", ["z"]).scores())
        assert asyncio.run(lmql.generate("xy", max_tokens=4)) == llm.generate_sync("xy", max_tokens=4)
        assert asyncio.run(lmql.score("xy", ["z"])).argmax() == "z"
    finally:
        lmql_core.api._default_model = None  # other tests expect no default model


def test_lmqls_runtime_options_stay_out_of_the_request(random_server: Server) -> None:
    """LMQL 0.7.3's ``lmql.generate`` takes its query runtime's options (``verbose=``, ``cache=``,
    ...) beside the model's, and its LMTP client (LMTPDcModel.generate) sends only the prompt,
    max_tokens, temperature, logit_bias, top_logprobs and the decoding options (top_k, ...): the
    GENERATE frames a relay records must carry nothing else."""
    runtime = {"verbose": True, "cache": False, "chunksize": 3, "max_len": 512, "step_budget": 64,
               "show_speculative": True, "output_writer": None, "openai_chunksize": 8}
    proxy = RecordingProxy(random_server.endpoint)
    try:
        llm = lmql.model("random", endpoint=proxy.endpoint)
        with_runtime = lmql.generate_sync("xy", max_tokens=4, model=llm, top_k=5, **runtime)
        assert with_runtime == llm.generate_sync("xy", max_tokens=4, top_k=5)
        frames = [frame.partition(" ")[2] for frame in proxy.sent if frame.startswith("GENERATE ")]
    finally:
        proxy.close()
    requests = [json.loads(frame) for frame in frames]
    assert len(requests) == 2, frames
    lmql_sends = {"model", "prompt", "max_tokens", "temperature", "logit_bias", "top_logprobs", "top_k"}
    for request in requests:
        assert set(request) - {"stream_id"} <= lmql_sends, request
        assert request["top_k"] == 5 and request["max_tokens"] == 4


def test_sampling_with_n(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    samples = llm.generate_sync("s", max_tokens=8, decoder="sample", temperature=1.5, n=4)
    assert isinstance(samples, list) and len(samples) == 4
    assert len(set(samples)) > 1  # 50257-way sampling at T=1.5 does not repeat itself


def test_unknown_decoder_is_rejected(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    with pytest.raises(ValueError, match="unknown decoder 'beam'"):
        llm.generate_sync("s", decoder="beam")


def test_server_errors_raise_in_the_client(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    with pytest.raises(ServerError, match="'max_tokens' must be between"):
        llm.generate_sync("s", max_tokens=-1)
    assert llm.generate_sync("s", max_tokens=2)  # the connection still works


def test_scoring_result_aggregations() -> None:
    # LMQL 0.7.3 (api/scoring.py): mean and normalized divide by the whole scored sequence's
    # length, the prompt's two tokens (log-probability 0) included
    result = ScoringResult("p", ["a", "bb"], [[-1.0], [-1.0, -3.0]], "m", [7, 8], [[5], [6, 6]])
    assert list(result.scores("sum")) == [-1.0, -4.0]
    assert list(result.scores("mean")) == pytest.approx([-1.0 / 3, -4.0 / 4])
    assert list(result.scores("normalized")) == pytest.approx([-1.0 / 3**0.7, -4.0 / 4**0.7])
    assert [list(s.input_ids) for s in result.seqs] == [[7, 8, 5], [7, 8, 6, 6]]
    assert [list(s) for s in result.full_token_scores] == [[0, 0, -1], [0, 0, -1, -3]]
    assert [list(s) for s in result.token_scores] == [[-1], [-1, -3]]
    assert sum(result.probs()) == pytest.approx(1.0)
    assert result.logprobs()[0] == pytest.approx(-math.log(1 + math.exp(-3)))
    assert result.argmax() == "a" and result.argmax("mean") == "a"
    with pytest.raises(ValueError, match="unknown aggregation"):
        result.scores("max")


def test_stream_sync_yields_deltas(random_server: Server) -> None:
    llm = lmql.model("random", endpoint=random_server.endpoint)
    deltas = list(llm.stream_sync("q", max_tokens=5))
    assert "".join(deltas) == llm.generate_sync("q", max_tokens=5)


def test_client_process_exits_promptly_and_imports_no_model_library(random_server: Server) -> None:
    script = textwrap.dedent(f"""
        import sys, lmql
        llm = lmql.model("random", endpoint="{random_server.endpoint}")
        print(llm.generate_sync("hi", max_tokens=3) != "")
        heavy = [m for m in ("torch", "transformers", "llama_cpp") if m in sys.modules]
        print(heavy)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["True", "[]"]


def test_unreachable_endpoint_says_so() -> None:
    from lmql_core.errors import ConnectionLost
    from tests.conftest import free_port

    llm = lmql.model("random", endpoint=f"127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionLost, match="cannot reach the LMTP server"):
        llm.generate_sync("x", max_tokens=1)


def test_lmql_serve_from_python() -> None:
    import signal
    import socket
    import time

    from tests.conftest import free_port

    port = free_port()
    script = f"import lmql; lmql.serve('random', host='127.0.0.1', port={port}, seed=3)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "lmql.serve did not start"
                time.sleep(0.1)
        info = lmql.model("random", endpoint=f"127.0.0.1:{port}").model_info_sync()["model_info"]
        assert info["seed"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_the_public_names_are_listed_once_and_resolve_everywhere() -> None:
    """Also once the module that serves has loaded (it was api/serve.py, and took the name of
    the function lmql_core.api.serve on its first import)."""
    server = lmql.serve("random", host="127.0.0.1", port=0, background=True)
    assert server is not None
    server.stop()
    assert lmql_core.api.__all__ == list(lmql_core.API_NAMES)
    assert set(lmql_core.API_NAMES) <= set(lmql.__all__)
    for name in lmql_core.API_NAMES:
        assert getattr(lmql, name) is getattr(lmql_core, name) is getattr(lmql_core.api, name)
