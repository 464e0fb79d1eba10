"""OpenAI's HTTP API served by front-end processes (`lmql serve-model --openai-processes N`): the
same answers and errors as when the server's own process serves it (the tests of those modules
run here again, against servers with front-ends), LMTP on the same port, and the processes'
lives: counted in the server's metrics, gone with the server, one lost without losing the API."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmql_core.openai_compat.frontend import TRAFFIC_EVERY_S
from tests.conftest import Server, free_port, read_metric, run_lmql, server_metric, the_error, wait_until
from tests.openai_fixtures import TOKEN, chat_model, client, lmtp_stream, post
from tests.test_constraints_openai import (  # noqa: F401 (collected here, against these servers)
    test_bad_structured_outputs_are_400,
    test_chat_with_response_format,
    test_regex_as_vllm_asks_gives_the_reference_text,
    test_response_format_json_schema,
)
from tests.test_openai_http_errors import (  # noqa: F401
    assert_shutdown_answers_503,
    open_request,
    test_a_client_that_goes_away_stops_its_streams,
    test_bad_requests_are_400,
    test_max_tokens_past_the_context_is_400,
    test_missing_or_wrong_key_is_401,
    test_more_streams_than_allowed_is_429,
    test_oversized_body_is_413,
    test_unknown_model_is_404,
    test_unknown_routes_are_404_in_openais_shape,
)
from tests.test_openai_server import (  # noqa: F401
    PROMPT,
    test_chat_renders_the_models_template,
    test_chat_streams_and_n,
    test_chat_without_a_template_is_a_clear_error,
    test_echo_gives_the_prompts_logprobs_as_transformers,
    test_errors_reach_the_client_as_its_exceptions,
    test_greedy_completion_equals_lmtp,
    test_logit_bias_as_lmtp,
    test_n_choices_with_a_seed_repeat_exactly,
    test_prompts_as_token_ids_and_lists,
    test_stop_strings_cut_the_text,
    test_stop_token_ids_end_the_choice,
    test_streamed_choices_with_echo_equal_the_whole_answer,
    test_streaming_equals_the_whole_answer,
    test_tokenize_and_detokenize_as_vllm,
    test_tokens_by_id_as_vllm_names_them,
    test_top_k_one_samples_the_greedy_text,
)

FRONTENDS = "2"


def with_frontends(model: str, *args: str, processes: str = FRONTENDS) -> Server:
    """A server with front-end processes, once it says Ready (they serve from then on)."""
    server = Server(model, "--openai-processes", processes, *args)
    server.wait_ready(lambda: "Ready:" in server.output(), timeout=120)
    return server


@pytest.fixture(scope="module")
def tiny() -> Iterator[Server]:
    server = with_frontends("lmql-tiny")
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.openai_fixtures import MAX_BODY, MAX_STREAMS

    path = chat_model(tmp_path_factory.mktemp("chat"))
    server = with_frontends(str(path), "--auth-token", TOKEN, "--max-frame-bytes", str(MAX_BODY),
                            "--max-streams", str(MAX_STREAMS))
    server.model = str(path)  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0, server.output()


def frontend_pids(server: Server) -> list[int]:
    """The server's child processes that are front-ends (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent = int(status.split("PPid:")[1].split()[0])
        if parent == server.proc.pid and b"openai_compat.frontend" in command:
            found.append(int(entry.name))
    return found


def metrics(server: Server) -> str:
    with urllib.request.urlopen(f"http://{server.endpoint}/metrics", timeout=10) as response:
        return response.read().decode()


def test_the_api_is_served_by_the_front_end_processes(tiny: Server) -> None:
    assert len(frontend_pids(tiny)) == int(FRONTENDS)
    # the server's process gets the request as a front-end's LMTP streams, which are not an LMTP
    # client's requests: its LMTP request count does not move
    before = read_metric(metrics(tiny), "lmql_requests", "lmtp", label="transport")
    answer = client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert read_metric(metrics(tiny), "lmql_requests", "lmtp", label="transport") == before
    # and LMTP on the same port, as ever
    assert len(lmtp_stream(tiny, {"model": "lmql-tiny", "text": PROMPT, "max_tokens": 3})) == 3
    assert read_metric(metrics(tiny), "lmql_requests", "lmtp", label="transport") == before + 1


def openai_requests(server: Server) -> float:
    return read_metric(metrics(server), "lmql_requests", "openai", label="transport")


def settled_openai_requests(server: Server) -> float:
    """The count once the front-ends have told everything (they tell every TRAFFIC_EVERY_S)."""
    last = openai_requests(server)
    while True:
        time.sleep(4 * TRAFFIC_EVERY_S)
        now = openai_requests(server)
        if now == last:
            return now
        last = now


def test_metrics_count_the_front_ends_requests_by_transport(tiny: Server) -> None:
    before = settled_openai_requests(tiny)
    client(tiny).models.list()
    client(tiny).completions.create(model="lmql-tiny", prompt=PROMPT, max_tokens=1)
    wait_until(lambda: openai_requests(tiny) >= before + 2)
    assert settled_openai_requests(tiny) == before + 2
    assert read_metric(metrics(tiny), "lmql_clients", "openai", label="transport") == 0


def test_another_route_on_a_handed_over_connection_says_where_to_ask(tiny: Server) -> None:
    with socket.create_connection(("127.0.0.1", tiny.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"lmql-tiny" in _response(sock)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive: still the front-end's
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 421") and b"on a new connection" in answer
    assert "lmql_requests" in metrics(tiny)  # which a new connection gets


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_the_api_goes_on_when_a_front_end_dies_and_they_go_with_the_server() -> None:
    server = with_frontends("lmql-tiny")
    try:
        pids = frontend_pids(server)
        os.kill(pids[0], signal.SIGKILL)
        # dead, its sockets closed: a connection handed to it while it dies is lost with it
        wait_until(lambda: not running(pids[0]))
        for _ in range(4):  # new connections, round robin: each reaches the one left
            status, answer = post(server, "/v1/completions", {"model": "lmql-tiny", "prompt": PROMPT,
                                                              "max_tokens": 2})
            assert status == 200 and answer["usage"]["completion_tokens"] == 2
    finally:
        assert server.stop() == 0, server.output()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_shutdown_ends_the_front_ends_requests_in_flight_with_503() -> None:
    server = with_frontends("lmql-tiny")
    pids = frontend_pids(server)
    assert_shutdown_answers_503(server)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_session_forgets_its_ended_streams_as_it_starts_more() -> None:
    """A front-end's connection starts a stream per choice of every request it passes on: its
    session must not hold the ended ones (their tokens) until the connection closes."""
    import asyncio

    from lmql_core.lmtp.server.session import FORGET_SLACK, Session
    from lmql_core.loading.identifiers import parse_model_id
    from lmql_core.loading.model_host import ModelHost, load_model

    async def run() -> int:
        host = ModelHost()
        host.add(await asyncio.to_thread(load_model, parse_model_id("random")))
        ended: list[Any] = []
        session = Session(host, lambda command, entries: ended.extend(
            e for e in entries if e.get("finish_reason")), raw_events=False)
        try:
            for i in range(5 * FORGET_SLACK):
                await session.start("GENERATE", {"stream_id": i, "model": "random", "prompt": [1, 2],
                                                 "max_tokens": 1})
                while len(ended) <= i:
                    await asyncio.sleep(0.001)
            return len(session._active)
        finally:
            session.close()
            host.close()

    assert asyncio.run(run()) <= FORGET_SLACK + 1


def test_one_requests_streams_do_not_starve_another_request_on_the_same_front_end() -> None:
    """Each request a front-end passes on is a client of its own in the engine's fair share (as
    on the server's loop), not one client for all of the front-end's requests."""
    server = with_frontends("random", processes="1")
    hogs = []
    try:
        for _ in range(8):  # 1,024 streams of 2,000 tokens, all on the one front-end's connection
            hogs.append(open_request(server, {"model": "random", "prompt": [1], "n": 128, "max_tokens": 2000}))
        wait_until(lambda: server_metric(server, "lmql_queue_depth", "random") > 900, 60)
        status, answer = post(server, "/v1/completions", {"model": "random", "prompt": [5, 6], "max_tokens": 24})
        assert status == 200 and answer["usage"]["completion_tokens"] == 24
        # first come, first served would have run the other requests' queue before it
        assert server_metric(server, "lmql_queue_depth", "random") > 800
    finally:
        for sock in hogs:
            sock.close()
        assert server.stop() == 0, server.output()


def test_front_ends_without_the_api_are_a_clear_error() -> None:
    result = run_lmql("serve-model", "random", "--no-openai", "--openai-processes", "2",
                      "--port", str(free_port()))
    assert "--openai-processes serves OpenAI's API: leave out --no-openai" in the_error(result)


def test_the_front_ends_exit_when_the_server_is_killed() -> None:
    """No orphans even where the server cannot stop them (SIGKILL): their channel closes."""
    server = with_frontends("random")
    pids = frontend_pids(server)
    assert len(pids) == int(FRONTENDS)
    server.proc.kill()
    server.stop()
    wait_until(lambda: not [pid for pid in pids if running(pid)], 30)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: not gone, and not a zombie whose threads have all exited (a
    killed process's first thread shows as a zombie while its others still hold its descriptors)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone
        return False
    state, threads = status.split("State:")[1].split()[0], status.split("Threads:")[1].split()[0]
    return not (state == "Z" and threads == "1")


def test_chat_over_lmtp_answers_the_prompt_or_a_clear_error_and_the_server_lives_on(tiny: Server) -> None:
    """CHAT, what front-ends ask the server: lmql-tiny has no chat template (null); messages that
    are not a list of objects are an error entry; the connection serves on."""
    import asyncio

    from tests.conftest import RawClient

    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        async with RawClient(tiny.endpoint) as c:
            await c.send("CHAT", {"model": "lmql-tiny", "stream_id": "a", "messages": [{"role": "user",
                                                                                         "content": "Hi"}]})
            command, answer = await c.frame()  # (a MSG: one entry, no finish reason)
            assert command == "MSG"
            await c.send("CHAT", {"model": "lmql-tiny", "stream_id": "b", "messages": "Hi"})
            refused = await c.stream("b")
            await c.send("GENERATE", {"model": "lmql-tiny", "stream_id": 1, "prompt": [1, 5], "max_tokens": 2})
            return answer, refused, await c.stream(1)

    [answer], [refused], tokens = asyncio.run(scenario())
    assert answer == {"stream_id": "a", "model": "lmql-tiny", "chat_prompt": None}
    assert "'messages' must be a list of objects" in refused["error"]
    assert len(tokens) == 2
