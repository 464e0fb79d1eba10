"""OpenAI's HTTP API refusing bad requests, seen on the wire with no client library: each error
in OpenAI's shape with its status; a client that goes away stops the engine's work for it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import Server, server_metric, wait_until
from tests.openai_fixtures import (
    MAX_BODY,
    MAX_STREAMS,
    TOKEN,
    assert_openai_error,
    lmtp_stream,
    post,
)

PROMPT = "Once upon a time"
# lmql-tiny never ends it by itself (EOS banned): only max_tokens, the context, or a cancel
ENDLESS = {"model": "lmql-tiny", "prompt": PROMPT, "max_tokens": 480, "logit_bias": {"2": -100}, "temperature": 1}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("body", "words"), [
    (b'{"model": "lmql-tiny", "prompt": ', "not valid JSON"),
    (b'["model", "lmql-tiny"]', "must be a JSON object"),
    (b'{"prompt": "Hi"}', "'model' must name the served model"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "n": "2"}', "'n' must be an integer"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "stream": 1}', "'stream' must be true or false"),
    (b'{"model": "lmql-tiny", "prompt": {"text": "Hi"}}', "'prompt' must be a text, a list of token ids"),
    (b'{"model": "lmql-tiny", "prompt": [1, 99999]}', "not a token id in [0, 2048)"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "top_p": 2}', "'top_p' must be in (0.0, 1.0]"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "logit_bias": {"x": 1}}', "is not a token id"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "presence_penalty": 0.5}', "'presence_penalty' is not supported"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "max_tokens": 0}', "'max_tokens' must be at least 1"),
    (b'{"model": "lmql-tiny", "prompt": "Hi", "stop": [""]}', "'stop' must be a non-empty text"),
])
def test_bad_requests_are_400(tiny: Server, body: bytes, words: str) -> None:
    assert_openai_error(*post(tiny, "/v1/completions", body), 400, words)


def test_unknown_model_is_404(tiny: Server) -> None:
    status, body = post(tiny, "/v1/completions", {"model": "gpt-4", "prompt": PROMPT})
    assert_openai_error(status, body, 404, "this server serves 'lmql-tiny', not 'gpt-4'")
    assert body["error"]["code"] == "model_not_found"
    assert_openai_error(*post(tiny, "/tokenize", {"model": "gpt-4", "prompt": PROMPT}), 404, "not 'gpt-4'")


def test_unknown_routes_are_404_in_openais_shape(tiny: Server) -> None:
    assert_openai_error(*post(tiny, "/v1/embeddings", {"model": "lmql-tiny", "input": "x"}), 404,
                        "no route POST /v1/embeddings here; this server answers GET /v1/models")
    assert status_of(tiny, "/v1/completions", None) == 404  # a GET of a POST route


def test_max_tokens_past_the_context_is_400(tiny: Server) -> None:
    # as vLLM: 400 when the prompt and max_tokens together exceed the context (max_model_len);
    # exactly the context is answered, every token of it generated
    prompt = post(tiny, "/tokenize", {"model": "lmql-tiny", "prompt": PROMPT})[1]["tokens"]
    room = 512 - len(prompt)
    status, body = post(tiny, "/v1/completions", {**ENDLESS, "prompt": prompt, "max_tokens": room + 1})
    assert_openai_error(status, body, 400, f"maximum context length is 512 tokens; this request asks for "
                        f"513 ({len(prompt)} in the prompt, {room + 1} for the completion)")
    assert body["error"]["param"] == "max_tokens"
    ok, answer = post(tiny, "/v1/completions", {**ENDLESS, "prompt": prompt, "max_tokens": room})
    assert ok == 200 and answer["usage"]["completion_tokens"] == room
    assert answer["choices"][0]["finish_reason"] == "length"


def test_lmtp_checks_only_the_prompt_against_the_context(tiny: Server) -> None:
    # LMTP (LMQL 0.7's server does the same) takes max_tokens past the context and ends the
    # stream when the context is full
    prompt = post(tiny, "/tokenize", {"model": "lmql-tiny", "prompt": PROMPT})[1]["tokens"]
    entries = lmtp_stream(tiny, {"model": "lmql-tiny", "prompt": prompt, "max_tokens": 600,
                                 "logit_bias": {"2": -100}, "temperature": 1})
    assert len(prompt) + len(entries) == 512 and entries[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_wrong_key_is_401(guarded: Server, headers: dict[str, str]) -> None:
    body = {"model": guarded.model, "prompt": PROMPT, "max_tokens": 1}  # type: ignore[attr-defined]
    status, answer = post(guarded, "/v1/completions", body, headers)
    assert_openai_error(status, answer, 401, "needs an API key")
    assert post(guarded, "/v1/completions", body, bearer(TOKEN))[0] == 200


def test_oversized_body_is_413(guarded: Server) -> None:
    body = {"model": guarded.model, "prompt": "x" * MAX_BODY}  # type: ignore[attr-defined]
    assert_openai_error(*post(guarded, "/v1/completions", body, bearer(TOKEN)), 413, f"({MAX_BODY} bytes")
    # without a Content-Length (chunked): refused while reading
    connection = http.client.HTTPConnection(*guarded.endpoint.split(":"), timeout=60)
    chunks = iter([json.dumps(body).encode()[i:i + 1000] for i in range(0, MAX_BODY + 1000, 1000)])
    connection.request("POST", "/v1/completions", body=chunks, encode_chunked=True,
                       headers={**bearer(TOKEN), "Content-Type": "application/json"})
    response = connection.getresponse()
    assert_openai_error(response.status, json.loads(response.read()), 413, "larger than this server accepts")
    connection.close()


def test_more_streams_than_allowed_is_429(guarded: Server) -> None:
    body = {"model": guarded.model, "prompt": PROMPT, "max_tokens": 1}  # type: ignore[attr-defined]
    status, answer = post(guarded, "/v1/completions", {**body, "n": MAX_STREAMS + 1}, bearer(TOKEN))
    assert_openai_error(status, answer, 429, f"the server runs at most {MAX_STREAMS} for one request")
    assert post(guarded, "/v1/completions", {**body, "n": MAX_STREAMS}, bearer(TOKEN))[0] == 200


def counts(server: Server) -> dict[str, float]:
    return {name: server_metric(server, f"lmql_sequences_{name}", "lmql-tiny") for name in ("cancelled", "finished")}


def open_request(server: Server, body: dict[str, Any]) -> socket.socket:
    """A request sent on a bare socket, which the test closes when it likes."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_stops_its_streams(tiny: Server, stream: bool) -> None:
    before = counts(tiny)
    sock = open_request(tiny, {**ENDLESS, "n": 3, "stream": stream})
    if stream:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the headers, then events as they come
    else:
        wait_until(lambda: server_metric(tiny, "lmql_active_sequences", "lmql-tiny") == 3)
    sock.close()
    wait_until(lambda: server_metric(tiny, "lmql_active_sequences", "lmql-tiny") == 0)
    # 3 x 480 tokens take seconds; the engine dropped them as cancelled long before
    assert counts(tiny) == {"cancelled": before["cancelled"] + 3, "finished": before["finished"]}


def test_shutdown_ends_requests_in_flight_with_503() -> None:
    assert_shutdown_answers_503(Server("lmql-tiny"))


def assert_shutdown_answers_503(server: Server) -> None:
    """A request in flight on ``server`` (lmql-tiny) is answered 503 when it stops."""
    answers: list[tuple[int, Any]] = []
    request = threading.Thread(target=lambda: answers.append(post(server, "/v1/completions", {**ENDLESS, "n": 4})))
    request.start()
    wait_until(lambda: server_metric(server, "lmql_active_sequences", "lmql-tiny") == 4)
    time.sleep(0.2)
    assert server.stop() == 0, server.output()
    request.join(30)
    assert_openai_error(*answers[0], 503, "shutting down")
    assert answers[0][1]["error"]["type"] == "service_unavailable"



def status_of(server: Server, path: str, body: dict[str, Any] | None) -> int:
    """The status of a POST of ``body`` (None: a GET)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.endpoint}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_no_openai_serves_lmtp_alone() -> None:
    with_api, without = Server("random", "--seed", "3"), Server("random", "--seed", "3", "--no-openai")
    try:
        body = {"model": "random", "prompt": [5, 6], "max_tokens": 3, "temperature": 0}
        assert status_of(with_api, "/v1/completions", body) == 200
        assert status_of(without, "/v1/completions", body) == 404
        assert status_of(without, "/tokenize", body) == 404
        assert len(lmtp_stream(without, dict(body))) == 3  # LMTP as ever
    finally:
        assert with_api.stop() == 0 and without.stop() == 0
