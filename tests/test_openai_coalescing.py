"""A stream whose consumer falls behind, or whose events are paced because many streams share
the server's loop, gets several tokens in one chunk; what a client reconstructs from the chunks
(text, tokens, log-probs, offsets, finish, usage) is exactly the whole answer of the same request."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from lmql_core.lmtp import wire
from lmql_core.loading.identifiers import parse_model_id
from lmql_core.loading.model_host import ModelHost, load_model
from lmql_core.openai_compat.pacing import StreamPacer
from lmql_core.openai_compat.service import OpenAIService

REQUEST = {"model": "lmql-tiny", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
           "logprobs": 2, "stream_options": {"include_usage": True}}


async def answers(pacer: StreamPacer, read: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole answer, and the same request's stream chunks read slowly (``read``: "blocking",
    the loop held up after each chunk; "sse", the events' bytes parsed as a client does)."""
    host = ModelHost()
    host.add(await asyncio.to_thread(load_model, parse_model_id("lmql-tiny")))
    try:
        service = OpenAIService(host, wire.Limits(), pacer)
        whole = await (await service.completion(dict(REQUEST), chat=False)).result()
        completion = await service.completion({**REQUEST, "stream": True}, chat=False)
        chunks = []
        if read == "blocking":
            async for chunk in completion.chunks():
                chunks.append(chunk)
                time.sleep(0.03)  # the loop is stuck; the engine goes on generating
        else:
            async for data in completion.sse():
                chunks += [json.loads(event[6:]) for event in data.split(b"\n\n")
                           if event.startswith(b"data: {")]
            assert data.endswith(b"data: [DONE]\n\n")
        completion.close()
        return whole, chunks
    finally:
        host.close()


def reconstructed(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The choice a streaming client puts together from the chunks."""
    text_chunks = [c["choices"][0] for c in chunks if c["choices"]]
    joined: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for choice in text_chunks:
        for key, values in joined.items():
            values += choice["logprobs"][key]
    return {"index": 0, "text": "".join(c["text"] for c in text_chunks), "logprobs": joined,
            "finish_reason": text_chunks[-1]["finish_reason"]}


def check_coalesced_equals_whole(pacer: StreamPacer, read: str) -> None:
    whole, chunks = asyncio.run(answers(pacer, read))
    token_counts = [len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks if c["choices"]]
    assert sum(token_counts) == 24
    assert max(token_counts) > 1, token_counts  # tokens did come together
    mine, reference = reconstructed(chunks), whole["choices"][0]
    assert mine["text"] == reference["text"] and mine["finish_reason"] == reference["finish_reason"]
    for key in ("tokens", "text_offset"):
        assert mine["logprobs"][key] == reference["logprobs"][key]
    # the same tokens; their log-probs to float32's rounding (the engine batched them differently)
    assert mine["logprobs"]["token_logprobs"] == pytest.approx(reference["logprobs"]["token_logprobs"], abs=1e-4)
    for top, expected in zip(mine["logprobs"]["top_logprobs"], reference["logprobs"]["top_logprobs"], strict=True):
        assert top == pytest.approx(expected, abs=1e-4)
    assert chunks[-1]["usage"] == whole["usage"] and not chunks[-1]["choices"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])


def test_a_consumer_behind_gets_the_tokens_since_in_one_chunk() -> None:
    check_coalesced_equals_whole(StreamPacer(0), "blocking")


def test_paced_events_carry_several_tokens_and_reconstruct_the_answer() -> None:
    pacer = StreamPacer(events_per_s=25)  # one stream: 40 ms between its events
    assert pacer.pause() == 0.0  # no stream yet
    check_coalesced_equals_whole(pacer, "sse")
    assert pacer.streams == 0  # the stream left the pacer when it ended


def test_deltas_are_written_as_json_dumps_writes_them() -> None:
    from lmql_core.openai_compat.chunk_json import delta_json

    logprobs = {"tokens": [" é\"\\\n", "token_id:7", "\u2028😀"], "token_logprobs": [None, -0.5, -1e30],
                "top_logprobs": [None, {"a": -0.25, "b": float("-inf")}, {"\u2028😀": -3.0000000000000004}],
                "text_offset": [0, 5, 16]}
    deltas = [
        {"index": 0, "text": " é\"\\\ntoken😀", "logprobs": logprobs, "finish_reason": None},
        {"index": 3, "text": "", "logprobs": None, "finish_reason": "length"},
        {"index": 1, "text": "x", "logprobs": {**logprobs, "tokens": []}, "finish_reason": "stop"},
        {"index": 2, "text": "", "logprobs": {**logprobs, "token_logprobs": [-0.5, -1e30, -3.0000000000000004]},
         "finish_reason": None},  # finite floats only: written at once
        {"index": 2, "text": "", "logprobs": {**logprobs, "token_logprobs": [-0.5, float("-inf"), 2]},
         "finish_reason": None},
        {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None},  # chat's
    ]
    for delta in deltas:
        assert delta_json(delta) == json.dumps(delta, separators=(",", ":"))


def test_log_probs_written_from_their_entries_are_what_json_dumps_writes() -> None:
    from lmql_core.openai_compat.choices import TokenLogprob, completion_logprobs
    from lmql_core.openai_compat.chunk_json import completion_logprobs_json

    items = [
        TokenLogprob(1, "<s>", None, [], 3),  # the echoed prompt's first token: no log-prob
        TokenLogprob(2, " é\"\\\n", -0.5, [(2, " é\"\\\n", -0.5)], 5),  # the chosen token alone
        TokenLogprob(3, "\u2028😀", -1e30, [], 2),  # no candidates: the chosen token's own
        TokenLogprob(4, "a", -0.25, [(4, "a", -0.25), (5, "b", float("-inf")), (6, "a", -3.0)], 1),  # "a" twice
        TokenLogprob(7, "token_id:7", float("-inf"), [(7, "token_id:7", float("nan"))], 10),
        TokenLogprob(8, "x", -2, [(8, "x", 0)], 1),  # ints, as json writes them
        TokenLogprob(9, "y", -3.0000000000000004, [(9, "y", -3.0000000000000004), (8, "x", -4.5)], 1),
    ]
    for offset in (0, 17):
        for part in (items, items[:1], items[3:], []):
            expected = json.dumps(completion_logprobs(part, offset), separators=(",", ":"))
            assert completion_logprobs_json(part, offset) == expected


def test_log_probs_written_from_the_engines_events_are_what_json_dumps_writes() -> None:
    """A stream's log-probs come from the engine's events without a ``TokenLogprob`` each; what
    they say is LMTP's entry for each event, as OpenAI names tokens, in json.dumps' bytes."""
    from lmql_core.engine.sampling import ONLY_THE_CHOSEN
    from lmql_core.engine.sequence import TokenEvent
    from lmql_core.lmtp.server.session import FINISH_REASONS
    from lmql_core.openai_compat.choices import Choice
    from lmql_core.openai_compat.chunk_json import events_logprobs_json

    tokenizer = load_model(parse_model_id("lmql-tiny")).tokenizer
    assert tokenizer is not None
    events = [TokenEvent(0, 5, -0.5, None, ONLY_THE_CHOSEN),  # the usual: the chosen token alone
              TokenEvent(0, 6, float("-inf"), None, {6: float("-inf")}),
              TokenEvent(0, 7, -1.25, None, {7: -1.0000000000000002}),  # the candidate's value wins
              TokenEvent(0, 8, -2.0, None, {9: -0.5, 8: -2.0, 10: float("-inf")}),  # candidates
              TokenEvent(0, 11, -0.0, None, {12: -3.0})]  # the chosen one not among them
    for as_ids in (False, True):
        def label(token: int, as_ids: bool = as_ids) -> str:
            return f"token_id:{token}" if as_ids else tokenizer.decode([token])

        choice = Choice(0, tokenizer, [], [], None, as_ids)
        for event in events:
            choice.add_event(event, None)
        choice.settle()
        taken = choice.new_logprob_events()
        assert taken == events and choice.new_logprob_events() == []  # each given once
        for offset in (0, 17):
            entries = [wire.token_entry(e, FINISH_REASONS) for e in events]
            offsets = [offset + sum(len(tokenizer.decode([e.token])) for e in events[:i]) for i in range(6)]
            expected = {"tokens": [label(e["token"]) for e in entries],
                        "token_logprobs": [e["logprob"] for e in entries],
                        "top_logprobs": [{label(int(t)): lp for t, lp in sorted(e["top_logprobs"].items(),
                                                                                key=lambda tv: -tv[1])}
                                         for e in entries],
                        "text_offset": offsets[:5]}
            assert events_logprobs_json(choice, events, offset) == (
                json.dumps(expected, separators=(",", ":")), offsets[5])
        assert [item.token for item in choice.logprobs] == [e.token for e in events]  # made when asked


def test_a_deferring_session_gets_its_events_when_it_takes_them_or_when_one_ends() -> None:
    from lmql_core.engine.sequence import Finish, TokenEvent
    from lmql_core.lmtp.server.outbox import Outbox
    from lmql_core.lmtp.server.session import Session

    async def run() -> list[list[int]]:
        outbox, got = Outbox(asyncio.get_running_loop()), []
        session = Session(ModelHost(), lambda command, events: got.append([e.token for e in events]),
                          outbox=outbox, raw_events=True)
        session.defers = True  # a paced stream during its pause

        async def engine_step(*events: TokenEvent) -> None:  # from another thread, as the engine's
            await asyncio.to_thread(session._deliver, list(events))  # (the session's sink)
            await asyncio.sleep(0.05)  # time for the loop to take what it was woken for

        await engine_step(TokenEvent(0, 5))
        await engine_step(TokenEvent(0, 6))
        assert got == []  # the loop was not woken for them
        session.take_events()
        assert got == [[5, 6]]
        await engine_step(TokenEvent(0, 7), TokenEvent(1, 8, finish_reason=Finish.LENGTH))
        assert got == [[5, 6], [7, 8]]  # an end comes at once, with what waited before it
        await engine_step(TokenEvent(0, 9, error="stopped"))
        assert got[-1] == [9]
        session.defers = False
        await engine_step(TokenEvent(0, 10))
        assert got[-1] == [10]  # not deferring: every step wakes the loop
        return got

    asyncio.run(run())


def test_one_steps_events_for_the_sessions_of_an_outbox_go_in_one_post_each_as_alone() -> None:
    """The engine thread hands a step's events for every session of one outbox over at once
    (``deliver_all`` -> ``Outbox.post_many``), with the rules of a post each: a session that
    defers is not woken for them, a closed one gets none, a hole's events wait for its end."""
    from lmql_core.engine.endings import deliver_all
    from lmql_core.engine.sequence import Finish, TokenEvent
    from lmql_core.lmtp.server.outbox import Outbox
    from lmql_core.lmtp.server.session import Session

    async def run() -> None:
        outbox, got = Outbox(asyncio.get_running_loop()), {}

        def session(name: str) -> Session:
            return Session(ModelHost(), lambda command, events: got.setdefault(name, []).append(
                [e.token for e in events]), outbox=outbox, raw_events=True)

        plain, paced, closed, holes = session("plain"), session("paced"), session("closed"), session("holes")
        paced.defers, closed.closed = True, True
        posts = []
        real_post_many = outbox.post_many
        outbox.post_many = lambda deliveries: (posts.append(len(deliveries)), real_post_many(deliveries))

        async def engine_step(step: dict) -> None:  # from another thread, as the engine's
            await asyncio.to_thread(deliver_all, step)
            await asyncio.sleep(0.05)  # time for the loop to take what it was woken for

        await engine_step({paced._deliver: [TokenEvent(0, 1)], holes._deliver_hole: [TokenEvent(0, 2)]})
        assert got == {} and posts == [2]  # nobody woke the loop
        await engine_step({plain._deliver: [TokenEvent(0, 3)], paced._deliver: [TokenEvent(0, 4)],
                           closed._deliver: [TokenEvent(0, 5)], holes._deliver_hole: [TokenEvent(0, 6)]})
        # the plain session woke the loop: every session's events so far went out (a closed one's never)
        assert got == {"plain": [[3]], "paced": [[1, 4]], "holes": [[2, 6]]} and posts == [2, 4]
        await engine_step({holes._deliver_hole: [TokenEvent(0, 7, finish_reason=Finish.LENGTH)]})
        assert got["holes"][-1] == [7]  # an end wakes the loop
        paced.take_events()
        assert got["paced"] == [[1, 4]]  # nothing left waiting
        sink = plain._deliver
        del plain  # the sink does not keep its session alive (no cycle): the session is freed at once
        await engine_step({sink: [TokenEvent(0, 8)]})  # and a step's late events for it are dropped
        assert got["plain"] == [[3]]

    asyncio.run(run())


async def paced_stream(close_after_first: bool) -> tuple[list[dict[str, Any]], float, dict[str, Any], int]:
    """A stream paced 10 s between its events (one stream, 0.1 events/s): its chunks, the seconds
    from its first chunk to its end, the same request's whole answer, and how many times the
    stream's data was read (a read may hold several chunks)."""
    host = ModelHost()
    host.add(await asyncio.to_thread(load_model, parse_model_id("lmql-tiny")))
    try:
        service = OpenAIService(host, wire.Limits(), StreamPacer(events_per_s=0.1, max_pause_s=10.0))
        request = {**REQUEST, "max_tokens": 6}
        whole = await (await service.completion(dict(request), chat=False)).result()
        completion = await service.completion({**request, "stream": True}, chat=False)
        chunks, first, reads = [], 0.0, 0
        async for data in completion.sse():
            first, reads = first or time.perf_counter(), reads + 1
            chunks += [json.loads(event[6:]) for event in data.split(b"\n\n") if event.startswith(b"data: {")]
            if close_after_first:
                completion.close()  # the client went away while the stream waits out its pause
        return chunks, time.perf_counter() - first, whole, reads
    finally:
        host.close()


def test_a_paced_stream_sends_its_end_without_waiting_out_the_pause() -> None:
    chunks, seconds, whole, _ = asyncio.run(paced_stream(close_after_first=False))
    assert seconds < 5.0  # not the 10 s pause: the last tokens come as soon as the choice ends
    texts = [c["choices"][0] for c in chunks if c["choices"]]
    # what the engine made before the stream's first event at once (its first token, or more on a
    # quick engine); the rest, with the finish, in one chunk: at most two chunks for six tokens
    assert 1 <= len(texts) <= 2, texts
    reference = whole["choices"][0]
    assert "".join(c["text"] for c in texts) == reference["text"]
    assert texts[-1]["finish_reason"] == reference["finish_reason"] == "length"
    assert sum(len(c["logprobs"]["tokens"]) for c in texts) == 6


def test_a_paced_stream_whose_client_goes_away_ends_without_waiting_out_the_pause() -> None:
    chunks, seconds, _, reads = asyncio.run(paced_stream(close_after_first=True))
    # nothing is read after the close (the one read holds the first token's chunk, and the end's
    # too where the engine finished the six tokens before the client read)
    assert seconds < 5.0 and reads == 1 and 1 <= len(chunks) <= 2, (reads, chunks)
    assert chunks[0]["choices"][0]["text"]
