"""`lmql serve-cluster lmql-tiny --replicas 2` on a local Ray: one endpoint answering LMTP and
OpenAI's API exactly as a single `lmql serve-model` does, streams spread over both replicas, a
growing prompt kept where its prefix is cached, a killed replica ending only its own streams."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RawClient, Server, wait_until
from tests.skip_report import strict

pytest.importorskip("ray.serve")
pytest.importorskip("lmql_hf")
openai = pytest.importorskip("openai")

from plugins.ray.tests.cluster import MODEL, NO_EOS, Cluster, prompt, reused, served, streams  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    running = Cluster(MODEL)
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture(scope="module")
def single() -> Iterator[Server]:
    server = Server(MODEL)
    yield server
    assert server.stop() == 0, server.output()


def without_errors(entries: dict[Any, list[dict[str, Any]]]) -> dict[Any, list[dict[str, Any]]]:
    assert all("error" not in e for stream in entries.values() for e in stream), entries
    return entries


def test_lmtp_generate_and_score_equal_a_single_server(cluster: Cluster, single: Server) -> None:
    requests = {
        "greedy": ("GENERATE", {"prompt": prompt(1), "max_tokens": 16, "temperature": 0, "top_logprobs": 3}),
        "text": ("GENERATE", {"text": "Once upon a time", "max_tokens": 8, "temperature": 0}),
        "seeded": ("GENERATE", {"prompt": prompt(2), "max_tokens": 8, "temperature": 0.8, "seed": 5}),
        "score": ("SCORE", {"prompt": prompt(3), "scored": [40, 41, 42, 43]}),
    }
    ours = without_errors(streams(cluster.endpoint, requests))
    reference = without_errors(streams(single.endpoint, requests))
    assert set(ours) == set(reference)
    for sid, entries in ours.items():
        assert same_entries(entries, reference[sid]), (sid, entries, reference[sid])
    assert len(ours["score"]) == 4 and ours["score"][-1]["finish_reason"] == "stop"


def same_entries(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> bool:
    """Entries equal but for the last digits of log-probabilities (which batch a request shares
    changes them, on one server as on two)."""
    def exact(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in ("logprob", "top_logprobs")} | {
            "top": sorted(entry.get("top_logprobs", {}))}

    def numbers(entry: dict[str, Any]) -> list[float]:
        return [entry["logprob"], *(v for _, v in sorted(entry.get("top_logprobs", {}).items()))]

    pairs = zip(ours, theirs, strict=True)
    return ([exact(e) for e in ours] == [exact(e) for e in theirs]
            and all(numbers(a) == pytest.approx(numbers(b), abs=1e-4) for a, b in pairs))


def test_our_client_generates_and_scores_as_with_a_single_server(cluster: Cluster, single: Server) -> None:
    import lmql_core.api as api

    results = []
    for server in (cluster, single):
        llm = api.model(MODEL, endpoint=server.endpoint)
        scored = llm.score_sync("The cat sat on the", [" mat", " hat"])
        results.append((llm.generate_sync("Once upon a time", max_tokens=12), scored.token_scores))
    (text, scores), (reference_text, reference_scores) = results
    assert text == reference_text
    assert len(scores) == 2
    # the two continuations may share a batch on one server and not on two replicas: last digits differ
    for ours, theirs in zip(scores, reference_scores, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)


LMQL_073 = os.environ.get("LMQL_073_PYTHON", "/work/lmql073/bin/python")  # nox's ray session sets it


@pytest.mark.skipif(not os.path.exists(LMQL_073) and not strict(), reason="no LMQL 0.7.3 (LMQL_073_PYTHON)")
def test_an_lmql_073_client_generates_scores_and_queries_as_with_a_single_server(
        cluster: Cluster, single: Server, tmp_path: Path) -> None:
    from tests.compat.build_model import build

    assert os.path.exists(LMQL_073), f"LMQL_073_PYTHON: no Python with LMQL 0.7.3 at {LMQL_073}"

    build(tmp_path / "tiny")  # lmql-tiny's tokenizer in a form LMQL 0.7.3's transformers reads
    driver = Path(__file__).with_name("lmql073_driver.py")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    answers = []
    for server in (cluster, single):
        run = subprocess.run([LMQL_073, str(driver), server.endpoint, str(tmp_path / "tiny")],
                             capture_output=True, text=True, timeout=300,
                             env={**environment, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, run.stderr
        answers.append(json.loads(run.stdout.strip().splitlines()[-1]))
    ours, reference = answers
    assert ours["generate"] and set(ours["query"]) == {"ANSWER", "OTHER"}
    assert ours["generate"] == reference["generate"] and ours["query"] == reference["query"]
    for a, b in zip(ours["token_scores"], reference["token_scores"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_openai_client_answers_as_with_a_single_server(cluster: Cluster, single: Server) -> None:
    answers = []
    for server in (cluster, single):
        client = openai.OpenAI(base_url=f"http://{server.endpoint}/v1", api_key="unused", max_retries=0)
        completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                               temperature=0, logprobs=2)
        echoed = client.completions.create(model=MODEL, prompt="The cat sat", max_tokens=0, echo=True,
                                           logprobs=1)
        chunks = client.completions.create(model=MODEL, prompt=[prompt(4)], max_tokens=6, temperature=0,
                                           stream=True)
        streamed = "".join(chunk.choices[0].text for chunk in chunks)
        answers.append((completion.choices[0].text, streamed, completion.choices[0].logprobs.token_logprobs,
                        echoed.choices[0].logprobs.token_logprobs))
    (*texts, logprobs, echoed_logprobs), (*reference_texts, reference_logprobs, reference_echoed) = answers
    assert texts == reference_texts
    # a prefix computed once and reused (on one replica, or on the single server) changes last digits
    assert logprobs == pytest.approx(reference_logprobs, abs=1e-4)
    assert echoed_logprobs[0] is None and echoed_logprobs[1:] == pytest.approx(reference_echoed[1:], abs=1e-4)
    listed = openai.OpenAI(base_url=f"http://{cluster.endpoint}/v1", api_key="x").models.list()
    assert [m.id for m in listed] == [MODEL]


def test_a_bad_openai_request_is_answered_as_by_a_single_server(cluster: Cluster, single: Server) -> None:
    errors = []
    for server in (cluster, single):
        client = openai.OpenAI(base_url=f"http://{server.endpoint}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=-1)
        errors.append(caught.value.body)
    assert errors[0] == errors[1]


def test_100_concurrent_streams_spread_over_both_replicas(cluster: Cluster) -> None:
    before = served(cluster.health())
    requests = {sid: ("GENERATE", {"prompt": prompt(100 + sid), "max_tokens": 8, "temperature": 0, **NO_EOS})
                for sid in range(100)}
    entries = without_errors(streams(cluster.endpoint, requests))
    assert all(stream[-1]["finish_reason"] == "length" and len(stream) == 8 for stream in entries.values())
    after = served(cluster.health())
    counts = {name: after[name] - before.get(name, 0) for name in after}
    assert sum(counts.values()) == 100, counts
    assert min(counts.values()) >= 25, counts  # both take a fair share, neither all


def test_a_growing_prompt_stays_on_the_replica_that_cached_it(cluster: Cluster) -> None:
    growing = prompt(7, 40)
    first_health = cluster.health()
    homes = []
    for round_ in range(4):
        before = cluster.health()
        [stream] = without_errors(streams(cluster.endpoint, {round_: ("GENERATE", {
            "prompt": growing, "max_tokens": 6, "temperature": 0})})).values()
        after = cluster.health()
        grown = {name: reused(after[name]) - reused(before[name]) for name in after}
        homes.append(max(grown, key=lambda name: served(after)[name] - served(before)[name]))
        if round_ > 0:  # the replica that served the prefix reused it; the other reused nothing
            assert grown[homes[-1]] >= len(growing) - 20, grown
            assert sum(grown.values()) == grown[homes[-1]], grown
        growing = growing + [e["token"] for e in stream] + prompt(50 + round_, 8)[1:]
    assert len(set(homes)) == 1, homes
    assert reused(cluster.health()[homes[0]]) > reused(first_health[homes[0]])


def test_a_stream_id_is_free_again_once_its_stream_has_ended(cluster: Cluster) -> None:
    async def run() -> list[list[dict[str, Any]]]:
        async with RawClient(cluster.endpoint) as c:
            answers = []
            for round_ in range(5):  # the next request follows the last entry at once
                await c.send("GENERATE", {"model": MODEL, "stream_id": 0, "prompt": prompt(500 + round_),
                                          "max_tokens": 2, "temperature": 0, **NO_EOS})
                answers.append(await c.stream(0))
            return answers
    assert all(len(entries) == 2 and "error" not in entries[-1] for entries in asyncio.run(run()))


def test_health_and_metrics_per_replica_and_aggregated(cluster: Cluster) -> None:
    health = cluster.health()
    assert len(health) == 2 and all(replica["status"] == "ok" for replica in health.values())
    status, text = cluster.get("/metrics")
    assert status == 200
    for name in health:
        assert f'lmql_tokens_generated_total{{replica="{name}",model="{MODEL}"}}' in text
        status, own = cluster.get(f"/replicas/{name}/metrics")
        assert status == 200 and "lmql_tokens_generated_total{" in own and "replica=" not in own
        status, one = cluster.get(f"/replicas/{name}/health")
        assert status == 200 and one["replica"] == name
    assert text.count("# TYPE lmql_tokens_generated_total counter") == 1
    status, missing = cluster.get("/replicas/no-such-replica/health")
    assert status == 503 and missing["status"] == "unreachable"


def test_killing_a_replica_ends_only_its_streams_and_the_next_requests_succeed(cluster: Cluster) -> None:
    requests = {sid: ("GENERATE", {"prompt": prompt(300 + sid), "max_tokens": 480, "temperature": 0,
                                   **NO_EOS}) for sid in range(8)}
    victims = []

    async def run() -> dict[Any, list[dict[str, Any]]]:
        async with RawClient(cluster.endpoint) as c:
            for sid, (command, body) in requests.items():
                await c.send(command, {"model": MODEL, "stream_id": sid, **body})
            victim = await asyncio.to_thread(busy_replica, cluster, len(requests))
            os.kill(victim["pid"], signal.SIGKILL)
            victims.append(victim)
            return await c.collect(set(requests), timeout=180)

    entries = asyncio.run(run())
    failed = [sid for sid, stream in entries.items() if "error" in stream[-1]]
    finished = [sid for sid, stream in entries.items() if stream[-1].get("finish_reason") == "length"]
    assert len(failed) == victims[0]["ongoing"] and len(failed) + len(finished) == 8, entries
    errors = [entries[sid][-1]["error"] for sid in failed]
    assert all("the replica serving this stream failed" in error for error in errors), errors
    assert [len(entries[sid]) for sid in finished] == [480] * len(finished)
    after = without_errors(streams(cluster.endpoint, {sid: ("GENERATE", {
        "prompt": prompt(400 + sid), "max_tokens": 4, "temperature": 0, **NO_EOS}) for sid in range(6)}))
    assert all(len(stream) == 4 for stream in after.values())
    cluster.wait_healthy(180)  # Ray restarts the replica


def busy_replica(cluster: Cluster, count: int) -> dict[str, Any]:
    """A replica running some of the streams while the other runs the rest (every one of the
    ``count`` streams routed: the victim's ``ongoing`` is the number of streams it will end)."""
    found: dict[str, Any] = {}

    def both_busy() -> bool:
        health = cluster.health()
        found.update(health)
        ongoing = [replica["ongoing"] for replica in health.values()]
        return min(ongoing) > 0 and sum(ongoing) == count
    wait_until(both_busy, timeout=60)
    return next(iter(found.values()))
