"""The ``openai:`` transport: LMQL programs, generate and score against an OpenAI-compatible
server (ours) give what they give over LMTP from the same server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, server_metric, wait_until
from tests.openai_fixtures import bundled_tiny
from tests.openai_suite import differences, program_names, run_programs

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def folder() -> str:
    return str(bundled_tiny())


@pytest.fixture(scope="module")
def server(folder: str) -> Iterator[Server]:
    served = Server(folder)  # by its folder, as the differential suite serves it
    yield served
    assert served.stop() == 0, served.output()


def both(server: Server, folder: str) -> tuple[Any, Any]:
    import lmql

    return (lmql.model(f"openai:{folder}", endpoint=f"http://{server.endpoint}/v1"),
            lmql.model(folder, endpoint=server.endpoint))


def test_generate_and_score_equal_lmtp(server: Server, folder: str) -> None:
    over_openai, over_lmtp = both(server, folder)
    assert over_openai.generate_sync(PROMPT, max_tokens=16) == over_lmtp.generate_sync(PROMPT, max_tokens=16)
    values = [" there", " you", " the end"]
    scores = over_openai.score_sync(PROMPT, values).token_scores
    expected = over_lmtp.score_sync(PROMPT, values).token_scores
    assert [len(s) for s in scores] == [len(s) for s in expected] == [1, 1, 2]
    for ours, reference in zip(scores, expected, strict=True):
        assert ours == pytest.approx(reference, abs=1e-4)


def test_an_abandoned_stream_stops_on_the_server(server: Server, folder: str) -> None:
    over_openai, _ = both(server, folder)
    over_openai.generate_sync("warm", max_tokens=1)
    before = [server_metric(server, f"lmql_sequences_{n}", folder) for n in ("cancelled", "finished")]
    stream = over_openai.stream_sync(PROMPT, max_tokens=480, logit_bias={"2": -100})
    next(stream), next(stream)
    stream.close()  # leaves the stream early: the HTTP response is closed, the server cancels
    wait_until(lambda: server_metric(server, "lmql_active_sequences", folder) == 0)
    after = [server_metric(server, f"lmql_sequences_{n}", folder) for n in ("cancelled", "finished")]
    assert after == [before[0] + 1, before[1]]


def test_an_unknown_model_is_a_clear_error(server: Server) -> None:
    import lmql
    from lmql_core.errors import LMQLError

    llm = lmql.model("openai:no-such-model", endpoint=f"http://{server.endpoint}/v1", tokenizer=str(bundled_tiny()))
    with pytest.raises(LMQLError, match="lmql-tiny', not 'no-such-model'"):
        llm.generate_sync(PROMPT, max_tokens=2)


def test_the_query_suite_runs_the_same_over_openai(server: Server, folder: str) -> None:
    over_openai = run_programs(f"http://{server.endpoint}/v1", folder)
    over_lmtp = run_programs(server.endpoint, folder)
    assert not differences(over_openai, over_lmtp, folder)
    assert len(over_openai) == len(program_names())


@pytest.fixture(scope="module")
def capped(folder: str) -> Iterator[Server]:
    """The same model on a server that takes at most 20 logit_bias entries per request."""
    served = Server(folder, "--max-logit-bias", "20")
    yield served
    assert served.stop() == 0, served.output()


def test_a_mask_over_the_cap_goes_the_other_way_round(capped: Server, server: Server, folder: str) -> None:
    import lmql

    over_capped = lmql.model(f"openai:{folder}", endpoint=f"http://{capped.endpoint}/v1", tokenizer=folder)
    reference = lmql.model(folder, endpoint=server.endpoint)
    allowed = {int(i) for i in reference.tokenizer.encode(" the cat and the dog", add_special_tokens=False)}
    banned = {str(i): -100 for i in range(reference.tokenizer.vocab_size) if i not in allowed}
    assert len(banned) > 20 and len(allowed) <= 20
    expected = reference.generate_sync(PROMPT, max_tokens=6, logit_bias=banned)
    assert over_capped.generate_sync(PROMPT, max_tokens=6, logit_bias=banned) == expected


def test_masks_past_the_cap_either_way_are_applied_on_the_client(capped: Server, server: Server,
                                                                 folder: str) -> None:
    names = ["oneliner_int", "oneliner_in_list", "oneliner_beam", "oneliner_stops_at"]
    ours = run_programs(f"http://{capped.endpoint}/v1", folder, *names)
    reference = run_programs(server.endpoint, folder, *names)
    assert set(ours) == set(names)
    assert not differences(ours, reference, folder)
