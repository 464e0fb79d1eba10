"""The loads of ``constraints_gpu.py`` (issue 31's GPU targets), against a running server:

- ``free_streams``: unconstrained GENERATEs (EOS banned) over one LMTP connection;
- ``program_clients``: concurrent constrained LMQL programs through our runtime (``lmql.run``),
  spread over client processes (this file with ``--client``) so one interpreter's lock does not
  bound the load; each constrained prompt statement goes to the server as one template request;
- ``openai_completions``: completions through the OpenAI transport, with a JSON schema
  (``response_format``) or unconstrained;
- ``metrics``: the server's counters (/metrics) that the shares of mask work come from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
          "cyan", "magenta", "olive", "navy", "teal", "maroon", "silver", "gold", "beige"]
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
# (b)'s schema (``openai_completions``; ``mask_costs.py --grammar`` fills its masks alone)
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 200}, "year": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 40}},
    "summary": {"type": "string", "maxLength": 600}},
    "required": ["title", "year", "tags", "summary"], "additionalProperties": False}


def programs(n: int) -> dict[str, str]:
    """The issue's five kinds of program (LMQL syntax; ``{name}`` differs in every run), each
    generating up to about ``n`` tokens, so their tokens/s compares with ``n``-token free streams."""
    colours = " and ".join(f"C{i} in {COLORS!r}" for i in range(4))
    return {
        "choice in 20": (f'argmax\n    "{{name}}. Colours: [C0], [C1], [C2], [C3]. Because:[WHY]"'
                         f'\nwhere\n    {colours} and len(TOKENS(WHY)) < {n}'),
        "len(X) < n": f'argmax\n    "{{name}}. Summary:[SUMMARY]"\nwhere\n    len(SUMMARY) < {4 * n}',
        "REGEX date": (f'argmax\n    "{{name}} was born on [DATE]. Notes:[NOTES]"\nwhere\n    '
                       f'REGEX(DATE, r"{DATE}") and len(TOKENS(NOTES)) < {n}'),
        "INT": (f'argmax\n    "{{name}} is [AGE] years old. Notes:[NOTES]"\nwhere\n    INT(AGE) and '
                f'len(TOKENS(AGE)) < 4 and len(TOKENS(NOTES)) < {n}'),
        "4-variable template": (
            'argmax\n    "{name}\\nName:[NAME]\\nAge:[AGE]\\nCity:[CITY]\\nBio:[BIO]"\nwhere\n'
            '    STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 8 and INT(AGE) and len(TOKENS(AGE)) < 4\n'
            f'    and CITY in [" Paris", " Zurich", " Tokyo"] and len(TOKENS(BIO)) < {n}'),
    }


METRICS = ("lmql_engine_busy_seconds", "lmql_engine_mask_fill_seconds", "lmql_engine_mask_wait_seconds",
           "lmql_engine_grammar_seconds", "lmql_engine_steps",
           "lmql_engine_steps_chained", "lmql_engine_tokens_forced_chained",
           "lmql_engine_device_wait_seconds", "lmql_engine_sequences_admitted_chained",
           "lmql_engine_prompt_passes_chained", "lmql_engine_sequences_taken_over",
           "lmql_tokens_generated", "lmql_tokens_prefilled", "lmql_sequences_finished")
EOS_BAN = -100.0


@dataclass
class Window:
    """A steady-state measurement: the load's clients go on (each one's requests one after
    another) until ``seconds`` after ``ramp`` seconds, so that every client has work in flight
    throughout, with no tail of the slowest ones' last requests; ``begin()`` and ``end()`` are
    called at the window's edges (the server's counters are read there)."""

    seconds: float
    begin: Callable[[], None]
    end: Callable[[], None]
    ramp: float = 1.0


def rounds_of(rounds: int, stopped: Callable[[], bool]) -> Iterable[int]:
    """A client's rounds: ``rounds`` of them, or (0) until ``stopped()``."""
    return range(rounds) if rounds else itertools.takewhile(lambda _: not stopped(), itertools.count())


async def windowed(window: Window | None, clients: Any, stop: asyncio.Event) -> float:
    """Await ``clients`` (a gathering of them); with a ``window``, mark its edges meanwhile and
    then ``stop`` them: the seconds measured (the window's, or the whole run's)."""
    started = time.perf_counter()
    if window is None:
        await clients
        return time.perf_counter() - started
    await asyncio.sleep(window.ramp)
    window.begin()
    started = time.perf_counter()
    await asyncio.sleep(window.seconds)
    window.end()
    seconds = time.perf_counter() - started
    stop.set()
    await clients
    return seconds


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {name.removeprefix("lmql_engine_").removeprefix("lmql_"):
            sum(float(v) for v in re.findall(rf"^{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))
            for name in METRICS}


def chain_breaks(port: int) -> dict[str, float]:
    """The server's ``lmql_engine_chain_breaks`` by reason (steps not followed by a chained step)."""
    return _labelled(port, "lmql_engine_chain_breaks_total", "reason")


def phases(port: int) -> dict[str, float]:
    """The server's ``lmql_engine_phase_seconds`` by phase (the engine thread's busy time)."""
    return _labelled(port, "lmql_engine_phase_seconds_total", "phase")


def _labelled(port: int, name: str, label: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found = re.findall(rf'^{name}{{[^}}]*{label}="([^"]+)"[^}}]*}} ([0-9.e+-]+)$', text, re.M)
    return {key: float(value) for key, value in found}


def served_name(port: int) -> str:
    models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models").read())
    return str(models["data"][0]["id"])


async def free_streams(port: int, model: str, streams: int, rounds: int, new_tokens: int,
                       prompt_tokens: int, eos: int, window: Window | None = None) -> tuple[float, list[str]]:
    """``streams`` clients, each ``rounds`` GENERATEs of ``new_tokens`` tokens one after another
    (0 with a ``window``: until it ends): (seconds, errors)."""
    import aiohttp

    rng = random.Random(2)
    queues: dict[Any, asyncio.Queue[Any]] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/",
                                                                max_msg_size=0) as ws:
        async def read() -> None:
            async for msg in ws:
                for entry in json.loads(msg.data.partition(" ")[2]):
                    if entry.get("stream_id") in queues:
                        queues[entry["stream_id"]].put_nowait(entry)

        async def client(c: int) -> list[str]:
            errors = []
            for r in rounds_of(0 if window else rounds, stop.is_set):
                sid = f"{c}-{r}"
                queues[sid] = asyncio.Queue()
                body = {"model": model, "stream_id": sid, "max_tokens": new_tokens, "temperature": 0.0,
                        "prompt": [rng.randrange(eos) for _ in range(prompt_tokens)],
                        "logit_bias": {str(eos): EOS_BAN}}
                await ws.send_str("GENERATE " + json.dumps(body))
                while True:
                    entry = await queues[sid].get()
                    if "error" in entry:
                        errors.append(entry["error"])
                    if "error" in entry or entry.get("finish_reason") is not None:
                        break
                del queues[sid]
            return errors

        reader = asyncio.create_task(read())
        gathered = asyncio.gather(*(client(c) for c in range(streams)))
        seconds = await windowed(window, gathered, stop)
        results = gathered.result()
        reader.cancel()
    return seconds, [e for errors in results for e in errors]


def program_clients(endpoint: str, folder: Path, streams: int, processes: int, rounds: int,
                    new_tokens: int, env: dict[str, str], on_ready: Callable[[], None] = lambda: None,
                    window: Window | None = None) -> tuple[float, int, list[str]]:
    """``streams`` concurrent program loops over ``processes`` client processes, each loop
    ``rounds`` programs (the five kinds in turn; with a ``window``, until it ends). The processes
    first compile and run each program once, then (after ``on_ready()``: the server's counters
    are read there, so that the warm-up's tokens and steps are not counted) all start together:
    (seconds, programs run, errors)."""
    share = [streams // processes + (1 if p < streams % processes else 0) for p in range(processes)]
    procs = [subprocess.Popen([sys.executable, __file__, "--client", endpoint, str(folder),
                               "--streams", str(n), "--rounds", str(0 if window else rounds),
                               "--new-tokens", str(new_tokens),
                               "--first", str(sum(share[:p]))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for p, n in enumerate(share) if n]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"a program client did not start (exit {proc.wait()}): {line!r}")
        on_ready()
        _tell(procs, "GO")
        seconds = None
        if window is not None:
            time.sleep(window.ramp)
            window.begin()
            started = time.monotonic()
            time.sleep(window.seconds)
            window.end()
            seconds = time.monotonic() - started
            _tell(procs, "STOP")
        results = [json.loads(proc.communicate(timeout=900)[0].partition("RESULT ")[2]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if seconds is None:
        seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    return seconds, sum(r["programs"] for r in results), [e for r in results for e in r["errors"]]


def _tell(procs: list[subprocess.Popen[str]], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


async def client_main(endpoint: str, folder: str, streams: int, rounds: int, new_tokens: int,
                      first: int) -> None:
    import lmql
    from lmql_core.errors import LMQLError

    model = lmql.model(folder, endpoint=endpoint, tokenizer=folder)
    sources = programs(new_tokens)
    kinds = list(sources)
    for kind in kinds:  # compiled once, and the server's paths warm
        with contextlib.suppress(LMQLError):  # random weights: an INT may end without a digit, as below
            await lmql.run(sources[kind], model=model, name=f"Warm {first}")
    print("READY", flush=True)
    sys.stdin.readline()
    started = time.time()
    stop = threading.Event()  # (rounds 0) set by the line STOP

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    if not rounds:
        threading.Thread(target=wait_for_stop, daemon=True).start()

    async def loop(c: int) -> tuple[int, list[str]]:
        done, errors = 0, []
        for r in rounds_of(rounds, stop.is_set):
            try:
                source = sources[kinds[(c + r) % len(kinds)]]
                await lmql.run(source, model=model, name=f"Client {c} round {r}")
                done += 1
            except LMQLError as e:  # counted, and the first ones shown
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
        return done, errors

    results = await asyncio.gather(*(loop(first + c) for c in range(streams)))
    print("RESULT " + json.dumps({"start": started, "end": time.time(),
                                  "programs": sum(d for d, _ in results),
                                  "errors": [e for _, errors in results for e in errors]}), flush=True)


async def openai_completions(port: int, model: str, streams: int, rounds: int, new_tokens: int,
                             prompt_tokens: int, eos: int, schema: dict[str, Any] | None,
                             window: Window | None = None) -> tuple[float, int, list[str]]:
    """(seconds, completion tokens, errors) of ``streams`` clients' ``rounds`` completions each
    (with a ``window``: until it ends)."""
    import aiohttp

    rng = random.Random(3 if schema else 4)
    extra: dict[str, Any] = ({"response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "doc", "schema": schema}}}
                             if schema else {"logit_bias": {str(eos): EOS_BAN}})

    stop = asyncio.Event()

    async def client(http: Any) -> tuple[int, list[str]]:
        tokens, errors = 0, []
        for _ in rounds_of(0 if window else rounds, stop.is_set):
            body = {"model": model, "prompt": [rng.randrange(eos) for _ in range(prompt_tokens)],
                    "max_tokens": new_tokens, "temperature": 0, **extra}
            async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                answer = await response.json()
            if response.status != 200:
                errors.append(str(answer)[:200])
                continue
            tokens += answer["usage"]["completion_tokens"]
        return tokens, errors

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        gathered = asyncio.gather(*(client(http) for _ in range(streams)))
        seconds = await windowed(window, gathered, stop)
        results = gathered.result()
    return seconds, sum(t for t, _ in results), [e for _, errors in results for e in errors]


if __name__ == "__main__":  # a program client (see ``program_clients``)
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", nargs=2, metavar=("ENDPOINT", "FOLDER"), required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    endpoint, folder = args.client
    asyncio.run(client_main(endpoint, folder, args.streams, args.rounds, args.new_tokens, args.first))
