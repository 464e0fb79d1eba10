"""Issue 31's GPU targets: grammars inside the batch, on a gpt2-medium-shaped model (random
weights, fp16), served by `lmql serve-model --cuda`.

    python benchmarks/constraints_gpu.py [--streams 64] [--rounds 3] [--new-tokens 128] [--out DIR]
    python benchmarks/constraints_gpu.py --model lmql-tiny --cpu --streams 4 --rounds 1   # smoke run

(a) ``--streams`` concurrent constrained programs over one LMTP connection, each program one
    GENERATE whose grammar is an LMQL-style template (a choice among 20, a text of at most n
    characters, REGEX dates, INTs, a 4-variable template; llguidance syntax), against as many
    unconstrained streams (EOS banned): aggregate tok/s, target at least 0.8x;
(b) JSON-schema output through the OpenAI transport (``response_format``) at ``--streams``
    concurrent completions, against unconstrained completions: tok/s, target at least 0.8x;
(c) mask work per step in (a) and (b), from the server's /metrics: filling masks (on its own
    thread, beside the forward pass), the part the engine thread waited for after the pass, and
    following grammars (taking tokens, fast-forward) on the engine thread, each as a share of the
    engine's busy time: target under 5% for what the engine thread spends (wait + follow).
Each client runs ``--rounds`` requests one after another; prompts are random token ids.

The model folder gets a 50,257-token byte-level BPE tokenizer trained here on local text (Python
sources) when it has none: nothing downloads. Needs llguidance (`pip install --no-deps` its wheel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import bench_model  # noqa: E402
from local_bpe import train_bpe  # noqa: E402
from processes import OFFLINE_ENV, free_port, start_server  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
          "cyan", "magenta", "olive", "navy", "teal", "maroon", "silver", "gold", "beige"]
PROGRAMS = {  # LMQL templates as one grammar each: literal text, holes, their constraints
    "choice in 20": 'start: "Favourite colour: " COLOR "\\nBecause: " WHY\n'
                    f'COLOR: {" | ".join(json.dumps(c) for c in COLORS)}\nWHY: /[^\\n]{{1,400}}/',
    "len(X) < n": 'start: "Summary: " SUMMARY "\\n"\nSUMMARY: /[^\\n]{1,600}/',
    "REGEX date": 'start: entry+\nentry: "Event on " DATE ": " NOTE "\\n"\n'
                  'DATE: /[0-9]{4}-[0-9]{2}-[0-9]{2}/\nNOTE: /[a-z ]{1,30}/',
    "INT": 'start: item+\nitem: "Count: " INT "\\n"\nINT: /[0-9]{1,6}/',
    "4-variable template": 'start: "Name: " NAME "\\nAge: " AGE "\\nCity: " CITY "\\nBio: " BIO\n'
                           'NAME: /[A-Za-z ]{1,40}/\nAGE: /[0-9]{1,3}/\nCITY: "Paris" | "Zurich" | "Tokyo"\n'
                           'BIO: /[^\\n]{1,600}/',
}
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 200}, "year": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 40}},
    "summary": {"type": "string", "maxLength": 600}},
    "required": ["title", "year", "tags", "summary"], "additionalProperties": False}
METRICS = ("lmql_engine_busy_seconds", "lmql_engine_mask_fill_seconds", "lmql_engine_mask_wait_seconds",
           "lmql_engine_grammar_seconds", "lmql_engine_steps", "lmql_tokens_generated")
EOS_BAN = -100.0


def ensure_tokenizer(folder: Path, vocab: int = 50257) -> None:
    """A byte-level BPE of ``vocab`` tokens (the last one ``<|endoftext|>``, GPT-2's EOS id),
    trained on this machine's Python sources, in ``folder`` unless it has a tokenizer."""
    if (folder / "tokenizer.json").exists():
        return
    paths = sysconfig.get_paths()
    tok = train_bpe([f"{paths['stdlib']}/**/*.py", f"{paths['purelib']}/**/*.py"], vocab, eos_last=True,
                    max_chars=80_000_000)
    assert tok.get_vocab_size() == vocab, f"trained {tok.get_vocab_size()} tokens; more text is needed"
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "tokenizer_class": "GPT2TokenizerFast"}))


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found = {}
    for name in METRICS:
        pattern = rf"^{name}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$"
        found[name] = sum(float(v) for v in re.findall(pattern, text, re.M))
    return found


def served_name(port: int) -> str:
    models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models").read())
    return str(models["data"][0]["id"])


async def lmtp_mode(port: int, model: str, args: argparse.Namespace, constrained: bool,
                    eos: int) -> tuple[int, float, list[str]]:
    """Every client's rounds over one LMTP connection: (tokens generated, seconds, errors)."""
    import aiohttp

    rng = random.Random(1 if constrained else 2)
    names = list(PROGRAMS)
    queues: dict[Any, asyncio.Queue[Any]] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/",
                                                                max_msg_size=0) as ws:
        async def read() -> None:
            async for msg in ws:
                for entry in json.loads(msg.data.partition(" ")[2]):
                    if entry.get("stream_id") in queues:
                        queues[entry["stream_id"]].put_nowait(entry)

        async def client(c: int) -> tuple[int, list[str]]:
            tokens, errors = 0, []
            for r in range(args.rounds):
                sid = f"{c}-{r}"
                queues[sid] = asyncio.Queue()
                body: dict[str, Any] = {"model": model, "stream_id": sid, "max_tokens": args.new_tokens,
                                        "prompt": [rng.randrange(eos) for _ in range(args.prompt_tokens)],
                                        "temperature": 0.0}
                if constrained:
                    body["grammar"] = PROGRAMS[names[(c + r) % len(names)]]
                else:
                    body["logit_bias"] = {str(eos): EOS_BAN}
                await ws.send_str("GENERATE " + json.dumps(body))
                while True:
                    entry = await queues[sid].get()
                    if "error" in entry:
                        errors.append(entry["error"])
                        break
                    tokens += 1
                    if entry.get("finish_reason") is not None:
                        break
                del queues[sid]
            return tokens, errors

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(args.streams)))
        seconds = time.perf_counter() - started
        reader.cancel()
    return sum(t for t, _ in results), seconds, [e for _, errs in results for e in errs]


async def openai_mode(port: int, model: str, args: argparse.Namespace, constrained: bool,
                      eos: int) -> tuple[int, float, list[str]]:
    import aiohttp

    rng = random.Random(3 if constrained else 4)
    extra: dict[str, Any] = ({"response_format": {"type": "json_schema", "json_schema": {"name": "doc",
                                                                                          "schema": SCHEMA}}}
                             if constrained else {"logit_bias": {str(eos): EOS_BAN}})

    async def client(http: Any) -> tuple[int, list[str]]:
        tokens, errors = 0, []
        for _ in range(args.rounds):
            body = {"model": model, "prompt": [rng.randrange(eos) for _ in range(args.prompt_tokens)],
                    "max_tokens": args.new_tokens, "temperature": 0, **extra}
            async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                answer = await response.json()
            if response.status != 200:
                errors.append(str(answer))
                continue
            tokens += answer["usage"]["completion_tokens"]
        return tokens, errors

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(client(http) for _ in range(args.streams)))
        seconds = time.perf_counter() - started
    return sum(t for t, _ in results), seconds, [e for _, errs in results for e in errs]


def measure(port: int, model: str, args: argparse.Namespace, eos: int, transport: str,
            constrained: bool) -> dict[str, Any]:
    mode = lmtp_mode if transport == "lmtp" else openai_mode
    before = metrics(port)
    tokens, seconds, errors = asyncio.run(mode(port, model, args, constrained, eos))
    after = metrics(port)
    delta = {k.removeprefix("lmql_engine_").removeprefix("lmql_"): after[k] - before[k] for k in METRICS}
    busy = delta["busy_seconds"] or float("nan")
    return {"transport": transport, "constrained": constrained, "streams": args.streams, "tokens": tokens,
            "seconds": round(seconds, 3), "tok_per_s": round(tokens / seconds, 1), "errors": len(errors),
            "first_error": errors[0][:200] if errors else None, "steps": int(delta["steps"]),
            "mask_fill_share": round(delta["mask_fill_seconds"] / busy, 4),
            "mask_wait_share": round(delta["mask_wait_seconds"] / busy, 4),
            "grammar_share": round(delta["grammar_seconds"] / busy, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-medium")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--cpu", action="store_true", help="serve on the CPU (a smoke run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = bench_model(args.model)
    ensure_tokenizer(model.folder)
    eos = model.eos_token_id() or 50256
    port = free_port()
    device = [] if args.cpu else ["--cuda", "--dtype", model.dtype]
    server = start_server([sys.executable, "-m", "lmql_core", "serve-model", str(model.folder), *device,
                           "--port", str(port)], port, env={**os.environ, **OFFLINE_ENV})
    try:
        name = served_name(port)
        warm = argparse.Namespace(**{**vars(args), "rounds": 1, "streams": min(8, args.streams)})
        for transport in ("lmtp", "openai"):  # a warm-up of each path (and each grammar compiled once)
            for constrained in (False, True):
                measure(port, name, warm, eos, transport, constrained)
        rows = [measure(port, name, args, eos, transport, constrained)
                for transport in ("lmtp", "openai") for constrained in (False, True)]
    finally:
        server.terminate()
        server.wait(60)
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("| transport | constrained | streams | tokens | s | tok/s | vs free | steps | mask fill "
          "| mask wait | following | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    free = {r["transport"]: r["tok_per_s"] for r in rows if not r["constrained"]}
    for r in rows:
        ratio = r["tok_per_s"] / free[r["transport"]] if free[r["transport"]] else float("nan")
        print(f"| {r['transport']} | {r['constrained']} | {r['streams']} | {r['tokens']} | {r['seconds']} "
              f"| {r['tok_per_s']} | {ratio:.2f}x | {r['steps']} | {r['mask_fill_share']:.1%} "
              f"| {r['mask_wait_share']:.1%} | {r['grammar_share']:.1%} | {r['errors']} |")
    for r in rows:
        if r["first_error"]:
            print(f"first error ({r['transport']}, constrained={r['constrained']}): {r['first_error']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "constraints_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
