"""Client programs of the LMQL 0.7.3 compatibility check, run against one LMTP server.

    <LMQL 0.7.3 venv>/bin/python tests/compat/programs.py lmql ENDPOINT MODEL_DIR
    <lmql-core venv>/bin/python  tests/compat/programs.py core ENDPOINT MODEL_DIR

``lmql``: LMQL 0.7.3's own client (``generate``, ``score``, queries with constraints, decoders)
plus raw LMTP frames sent with aiohttp. ``core``: lmql-core's client. First a line
``COMPAT_PLAN <json list>`` names the checks it will run; then every check prints one line
``COMPAT <json>`` with its name and result (or error); ``run_compat.py`` compares them. It exits
non-zero when it could not run them all (a crash, or a check with no answer: a stuck server).
Names after MODEL_DIR select checks (``-NAME`` leaves one out). ``lmql-readme``: LMQL 0.7.3's client
on the README's backend; MODEL_DIR is then a tokenizer folder (``readme_backend.py``).
Only the standard library is imported at module level: each side brings its own ``lmql``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

TIMEOUT = 120.0  # per check; an LMQL 0.7 client waits forever for a stream that never ends

PROMPT = "Once upon a time"
LONG_PROMPT = "I think that"  # lmql-tiny goes on for over 32 tokens; a random model may never stop
SCORE_PROMPT = "The cat sat on the"
SCORE_VALUES = [" mat", " dog", " table"]

QUERIES = {
    "query_stops_at": '''argmax
    "Q: What is the capital of France?\\nA:[ANSWER]" where STOPS_AT(ANSWER, ".") and len(TOKENS(ANSWER)) < 25''',
    "query_len_tokens": '''argmax
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 12''',
    "query_in_list": '''argmax
    "The cat sat on the[PLACE]" where PLACE in [" mat", " dog", " table", " floor"]''',
    "query_int": '''argmax
    "Q: What is two plus two?\\nA: The answer is [N]" where INT(N) and len(TOKENS(N)) < 4''',
    # one line: LMQL 0.7.3's parser fails on a where clause split over lines in a query string
    "query_multi_var": '''argmax
    "Q: Name a color.\\nA:[COLOR]\\nQ: Name an animal.\\nA:[ANIMAL]\\nQ: And a number?\\nA:[NUM]" where STOPS_AT(COLOR, "\\n") and len(TOKENS(COLOR)) < 8 and STOPS_AT(ANIMAL, "\\n") and len(TOKENS(ANIMAL)) < 8 and INT(NUM) and len(TOKENS(NUM)) < 3''',
    # A is generated as two tokens whose text encodes as one: TOKENS(A) counts the generated ones
    "query_tokens_of_earlier": '''argmax
    "Name:[A]\\nB:[B]" where len(TOKENS(A)) == 2 and len(TOKENS(B)) < 4''',
    # LMQL 0.7.3 skips the distribution of a query with no other variable: give it one
    "query_distribution": '''argmax
    "Q: Where did the cat sit?\\nA:[ANSWER]\\nSo the cat sat on the[PLACE]" where STOPS_AT(ANSWER, "\\n") and len(TOKENS(ANSWER)) < 6
distribution
    PLACE in [" mat", " dog", " table"]''',
    "query_beam": '''beam(n=2)
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 6''',
    "query_sample": '''sample(n=2, temperature=0.8)
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 10''',
    "query_sample_default": '''sample(n=2)
    "Once upon a time[STORY]" where len(TOKENS(STORY)) < 10''',  # sends "temperature": 1, an int
}


def plain(value: Any) -> Any:
    """JSON-friendly: query results to their prompt and variables (and distribution fields),
    tuples to lists, numpy scalars to Python numbers."""
    if hasattr(value, "prompt") and hasattr(value, "variables"):
        record = {"prompt": value.prompt, "variables": plain(dict(value.variables))}
        for field in ("distribution_variable", "distribution_values"):
            if getattr(value, field, None) is not None:
                record[field] = plain(getattr(value, field))
        return record
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def query_result(result: Any) -> Any:
    if isinstance(result, list):
        return [query_result(r) for r in result]
    return {"prompt": result.prompt, "variables": plain(result.variables)}


# --- LMQL 0.7.3's client ----------------------------------------------------------------------


def lmql_checks(endpoint: str, folder: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    import lmql

    m = lmql.model(folder, endpoint=endpoint, tokenizer=folder)

    async def score() -> Any:
        r = await m.score(SCORE_PROMPT, SCORE_VALUES)
        return {"token_scores": plain(r.token_scores), "sum": plain(r.scores("sum")),
                "argmax": r.argmax()}

    def query(code: str) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            return query_result(await lmql.run(code, model=m))
        return run

    # a decoding option LMQL's client forwards with every request (its server hands it to
    # transformers; ours applies it in its own sampler)
    penalized = lmql.model(folder, endpoint=endpoint, tokenizer=folder, repetition_penalty=1.3)
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "generate": lambda: m.generate(PROMPT, max_tokens=20),
        "generate_40": lambda: m.generate("The quick brown fox", max_tokens=40),
        "generate_repetition_penalty": lambda: penalized.generate("The cat sat on the mat. The cat",
                                                                  max_tokens=20),
        "score": score,
    }
    checks.update({name: query(code) for name, code in QUERIES.items()})

    async def certificate() -> Any:
        """Tracing asks MODEL_INFO and records its ``model_info`` in the certificate."""
        code = QUERIES["query_len_tokens"]
        answer = await lmql.run(code, model=m, certificate="return_dict")
        events = json.loads(str(answer["certificate"]))["events"]
        models = [e["data"]["model"] for e in events if e["name"] == "lmtp.generate"]
        return {"result": query_result(answer["result"]),
                "model_info": sorted({type(info).__name__ for info in models}),
                "names_model": all(isinstance(info, dict) and info.get("model") == folder for info in models)}

    checks["query_certificate"] = certificate
    checks.update({name: (lambda probe=probe: probe(endpoint, folder)) for name, probe in PROBES.items()})
    checks["error_unserved_model"] = lambda: unserved_model(endpoint, folder)
    return checks


async def unserved_model(endpoint: str, folder: str) -> Any:
    """A model the server does not serve: lmql-core answers a TOKEN error, which LMQL's client
    raises (LMQL's own server would try to load the model instead)."""
    import lmql

    other = lmql.model(folder + "-not-served", endpoint=endpoint, tokenizer=folder)
    try:
        await other.generate(PROMPT, max_tokens=3)
    except Exception as e:  # LMQL's LMTPStreamError, raised in the query
        return {"raised": type(e).__name__}
    return {"raised": None}


# --- raw LMTP frames, as LMQL 0.7.3's client writes them ----------------------------------------


class Raw:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.next_id = 1

    async def __aenter__(self) -> Raw:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"http://{self.endpoint}")  # as LMQL 0.7's client
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()
        await self.session.close()

    async def request(self, command: str, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Send one request; (command, entry) pairs of its stream until a finish, error or MSG."""
        stream_id = self.next_id
        self.next_id += 1
        await self.ws.send_str(f"{command} {json.dumps({**payload, 'stream_id': stream_id})}")
        entries = []
        while True:
            msg = await self.ws.receive()
            if not isinstance(msg.data, str):
                raise RuntimeError(f"connection ended: {msg.type} {msg.data}")
            frame, body = msg.data.split(" ", 1)
            payload_list = json.loads(body)
            if not isinstance(payload_list, list):
                raise RuntimeError(f"{frame} payload is not a list: {body[:200]}")
            for entry in payload_list:
                if entry.get("stream_id") != stream_id:
                    continue
                entries.append((frame, entry))
                if frame == "MSG" or "error" in entry or entry.get("finish_reason") is not None:
                    return entries


def tokenize(folder: str, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def token_entries(entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The entries a client uses (everything up to the first finish), minus anything extra."""
    kept = ("token", "logprob", "finish_reason", "top_logprobs", "error")
    return [{"frame": frame, **{k: e[k] for k in kept if k in e}} for frame, e in entries]


async def probe_generate_length(endpoint: str, folder: str) -> Any:
    async with Raw(endpoint) as raw:
        entries = await raw.request("GENERATE", {
            "max_tokens": 4, "temperature": 0.0, "logit_bias": {}, "top_logprobs": 3,
            "model": folder, "prompt": tokenize(folder, PROMPT)})
    return token_entries(entries)


async def probe_generate_masked(endpoint: str, folder: str) -> Any:
    """A mask as LMQL writes it: -100 on many ids (here the first 60%), the rest allowed."""
    from transformers import AutoTokenizer

    banned = range(3, len(AutoTokenizer.from_pretrained(folder)) * 6 // 10)
    async with Raw(endpoint) as raw:
        entries = await raw.request("GENERATE", {
            "max_tokens": 3, "temperature": 0.0, "logit_bias": {str(i): -100 for i in banned},
            "top_logprobs": 1, "model": folder, "prompt": tokenize(folder, PROMPT)})
    return token_entries(entries)


async def probe_generate_eos(endpoint: str, folder: str) -> Any:
    """EOS forced by a +100 bias: the EOS token is sent, with finish_reason "stop"."""
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(folder).eos_token_id
    async with Raw(endpoint) as raw:
        entries = await raw.request("GENERATE", {
            "max_tokens": 5, "temperature": 0.0, "logit_bias": {str(eos): 100}, "top_logprobs": 1,
            "model": folder, "prompt": tokenize(folder, PROMPT)})
    return [{k: e[k] for k in ("frame", "token", "logprob", "finish_reason")} for e in token_entries(entries)]


async def probe_score(endpoint: str, folder: str) -> Any:
    ids = tokenize(folder, SCORE_PROMPT + " mat.")
    async with Raw(endpoint) as raw:
        entries = await raw.request("SCORE", {"model": folder, "prompt": ids[:-2], "scored": ids[-2:]})
    return token_entries(entries)


async def probe_model_info(endpoint: str, folder: str) -> Any:
    """Shape only: the values differ by design (LMQL names its constructor; we name our backend)."""
    async with Raw(endpoint) as raw:
        for _ in range(50):  # LMQL's server says "<unavailable>" until the model is loaded
            [(frame, entry)] = await raw.request("MODEL_INFO", {"model": folder, "data": {"model": folder}})
            if entry.get("model_info") != "<unavailable>":
                break
            await asyncio.sleep(0.2)
    return {"frame": frame, "keys": sorted(k for k in entry if k in ("stream_id", "model_info", "error")),
            "model_info": type(entry.get("model_info")).__name__}


async def probe_bad_token(endpoint: str, folder: str) -> Any:
    """An id outside the vocabulary: an error for that stream only; the connection lives on."""
    async with Raw(endpoint) as raw:
        bad = await raw.request("GENERATE", {"max_tokens": 2, "temperature": 0.0, "logit_bias": {},
                                             "top_logprobs": 1, "model": folder, "prompt": [1, 10**7]})
        good = await raw.request("SCORE", {"model": folder, "prompt": [1], "scored": [1]})
    return {"bad": [(frame, sorted(e)) for frame, e in bad],
            "then": [(frame, e.get("token"), e.get("finish_reason")) for frame, e in good]}


PROBES = {
    "wire_generate_length": probe_generate_length,
    "wire_generate_masked": probe_generate_masked,
    "wire_generate_eos": probe_generate_eos,
    "wire_score": probe_score,
    "wire_model_info": probe_model_info,
    "wire_bad_token": probe_bad_token,
}


# --- lmql-core's client -------------------------------------------------------------------------


def core_checks(endpoint: str, folder: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    import lmql

    m = lmql.model(folder, endpoint=endpoint, tokenizer=folder)
    zero_config = lmql.model(folder, endpoint=endpoint)  # the server's tokenizer, or a local one

    async def score() -> Any:
        r = await m.score(SCORE_PROMPT, SCORE_VALUES)
        return {"token_scores": r.token_scores, "sum": r.scores("sum"), "argmax": r.argmax()}

    async def sample() -> Any:
        return await m.generate(PROMPT, max_tokens=8, decoder="sample", temperature=0.8, n=2)

    async def to_eos() -> Any:
        """No max_tokens: LMQL's server stops at 32 tokens; the client must ask for the rest."""
        text = await m.generate(LONG_PROMPT)
        return {"text": text, "tokens": len(m.tokenizer.encode(text, add_special_tokens=False))}

    async def concurrent() -> Any:
        """Two requests queued while LMQL's server is busy run as one batch there, and both get
        the batch's largest max_tokens: the client must keep only the 3 it asked for."""
        no_eos = {str(m.tokenizer.eos_token_id): -100}  # 100 tokens for sure: busy for a second or more
        busy = asyncio.ensure_future(m.generate("1. ", max_tokens=100, logit_bias=no_eos))
        await asyncio.sleep(0.2)
        both = await asyncio.gather(m.generate(LONG_PROMPT, max_tokens=3), m.generate("1. ", max_tokens=30))
        await busy
        return both

    return {
        "generate": lambda: m.generate(PROMPT, max_tokens=20),
        "generate_40": lambda: m.generate("The quick brown fox", max_tokens=40),
        "generate_to_eos": to_eos,
        "generate_concurrent": concurrent,
        "generate_no_tokenizer_arg": lambda: zero_config.generate(PROMPT, max_tokens=20),
        "score": score,
        "sample": sample,
    }


def readme_checks(endpoint: str, tokenizer: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """LMQL 0.7.3's client on the README's backend (``readme_backend.py``; ``lmql serve-model
    mine:anything``), tokenizing with ``tokenizer``, a folder whose token ids are bytes."""
    import lmql

    m = lmql.model("mine:anything", endpoint=endpoint, tokenizer=tokenizer)

    async def score() -> Any:
        r = await m.score("ab", ["c", "xy"])
        return {"token_scores": plain(r.token_scores), "argmax": r.argmax()}

    async def query() -> Any:
        return query_result(await lmql.run('argmax "ab[X]" where len(TOKENS(X)) < 4', model=m))

    return {"readme_generate": lambda: m.generate("ab", max_tokens=3), "readme_score": score,
            "readme_query": query}


SIDES = {"lmql": lmql_checks, "core": core_checks, "lmql-readme": readme_checks}


async def main(side: str, endpoint: str, folder: str, selection: list[str]) -> int:
    checks = SIDES[side](endpoint, folder)
    only = {s for s in selection if not s.startswith("-")}
    skip = {s[1:] for s in selection if s.startswith("-")}
    planned = {name: check for name, check in checks.items() if (not only or name in only) and name not in skip}
    print("COMPAT_PLAN " + json.dumps(list(planned)), flush=True)
    for name, check in planned.items():
        start = time.monotonic()
        record: dict[str, Any] = {"check": name}
        try:
            record["result"] = plain(await asyncio.wait_for(check(), TIMEOUT))
        except asyncio.TimeoutError:
            record["error"] = f"no answer in {TIMEOUT:.0f} s"
            print("COMPAT " + json.dumps(record), flush=True)
            return 2  # the server is stuck: the checks after this one would wait as long
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc()[-2000:]
        record["seconds"] = round(time.monotonic() - start, 2)
        print("COMPAT " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    side, endpoint, folder, *rest = sys.argv[1:]
    if side not in SIDES:
        raise SystemExit("usage: programs.py lmql|core|lmql-readme ENDPOINT MODEL_DIR [CHECK | -CHECK ...]")
    sys.exit(asyncio.run(main(side, endpoint, folder, rest)))
