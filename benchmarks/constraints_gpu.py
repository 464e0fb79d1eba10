"""Issue 31's GPU targets ("Done when"), on a gpt2-medium-shaped model (random weights, fp16)
served by `lmql serve-model --cuda`, in one run from the repository root:

    python3 -m pip install -q --no-deps --no-build-isolation . ./plugins/hf
    python3 benchmarks/constraints_gpu.py --wheels .whl --out $OUT       # carry [".whl"]
    python3 benchmarks/constraints_gpu.py --cpu --lmql-python /work/lmql073/bin/python   # a CPU smoke run
    python3 benchmarks/constraints_gpu.py --only a --rounds 4 --out $OUT                  # (a) alone
    python3 benchmarks/constraints_gpu.py --cpu --only a --chain-steps --streams 64 --rounds 2 \
        --new-tokens 128                      # (a)'s steps on the CPU, chained as on a GPU

(.whl: `bash benchmarks/fetch_llguidance_wheel.sh && bash benchmarks/fetch_lmql073_wheels.sh` where
pip reaches the registry; ``--wheels`` installs llguidance beside lmql-core and LMQL 0.7.3 into its
own folder.)

(a) ``--streams`` concurrent constrained LMQL programs through our runtime (``lmql.run``, over
    ``--client-procs`` processes; every prompt statement one template request): the five kinds of
    ``constraint_loads.programs`` in turn, each ``--rounds`` times, against as many unconstrained
    streams of ``--new-tokens`` tokens (EOS banned): tokens/s from the server's count, target
    at least 0.8x; the steps that were not chained, by reason (``lmql_engine_chain_breaks``);
(b) JSON-schema output through the OpenAI transport (``response_format``) at ``--streams``
    concurrent completions, against unconstrained completions: target at least 0.8x;
(c) mask work in (a) and (b) from the server's /metrics: filling masks (on its own thread, beside
    the forward pass) per step and as a share of the engine's busy time, the part the engine thread
    waited for, and following llguidance grammars: target under 5% for what the engine thread spends
    (wait + following); "engine busy": the engine thread's working share of the time between the two
    reads of the counters (the clients' timed seconds and their wind-down);
(d) each of ``constrained_programs.py``'s five programs alone (``--reps`` runs, median ms) with
    the server path, with today's client masks (``LMQL_SERVER_CONSTRAINTS=off``, the same server)
    and with LMQL 0.7.3's runtime and server (from ``--wheels`` or ``--lmql-python``; left out
    without): targets at least 1x the client path and 20x LMQL 0.7.3.

The model folder has a 50,257-token byte-level BPE trained on local Python sources
(``bench_models.py``; nothing downloads). ``--cpu``: gpt2-micro-50k (the same vocabulary, one tiny layer) on
the CPU at small sizes, to check the whole run end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "compat"))
from bench_models import bench_model  # noqa: E402
from constrained_programs import PROGRAMS, runner_records, side_records  # noqa: E402
from constraint_loads import (  # noqa: E402
    SCHEMA,
    Window,
    chain_breaks,
    free_streams,
    metrics,
    openai_completions,
    phases,
    program_clients,
    served_name,
)
from processes import LMQL_073_SERVE, OFFLINE_ENV, free_port, install_wheels, lmql_073_env, start_server  # noqa: E402
from stack_sampler import wrapped  # noqa: E402

SERVER_PATH, CLIENT_PATH, LMQL = "server path", "client masks", "lmql 0.7.3"
LMQL_SITE = Path("/tmp/lmql073-site")


def install_llguidance(wheels: Path) -> None:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        *map(str, wheels.glob("llguidance-*.whl"))], check=True)


def measured(port: int, point: str, run: Any, profile: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``run(start, end)`` (-> seconds, errors) between two reads of the server's counters; the
    first read again where ``run`` calls ``start()`` (when its warm-up is over and its clock
    starts), the last one where it calls ``end()`` (a ``--window``'s end), else after it.
    ``profile()`` starts the server's stack sampling with the clock and ends it after the run."""
    before, breaks, parts = metrics(port), chain_breaks(port), phases(port)
    span = [time.monotonic()]  # from the first read to the last: the time the counters' deltas cover
    after: dict[str, dict[str, float]] = {}

    def start() -> None:
        before.update(metrics(port))
        breaks.update(chain_breaks(port))
        parts.update(phases(port))
        span[0] = time.monotonic()
        profile()

    def end() -> None:
        after.update(metrics=metrics(port), breaks=chain_breaks(port), parts=phases(port))
        span.append(time.monotonic())

    seconds, errors = run(start, end)
    profile()
    if not after:
        end()
    delta = {k: v - before[k] for k, v in after["metrics"].items()}
    broken = {k: int(v - breaks.get(k, 0)) for k, v in after["breaks"].items()}
    busy, steps = delta["busy_seconds"] or float("nan"), max(1.0, delta["steps"])
    per_step = {k: round((v - parts.get(k, 0)) / steps * 1e3, 3) for k, v in after["parts"].items()}
    return {"point": point, "tokens": int(delta["tokens_generated"]), "seconds": round(seconds, 3),
            "tok_per_s": round(delta["tokens_generated"] / seconds, 1), "steps": int(delta["steps"]),
            "chained": int(delta["steps_chained"]),
            "chain_breaks": {k: v for k, v in broken.items() if v},
            "forced_chained": int(delta["tokens_forced_chained"]),
            "fill_us_per_step": round(delta["mask_fill_seconds"] / steps * 1e6, 1),
            "fill_share": delta["mask_fill_seconds"] / busy, "wait_share": delta["mask_wait_seconds"] / busy,
            "following_share": delta["grammar_seconds"] / busy, "busy_share": busy / (span[1] - span[0]),
            "busy_ms_per_step": round(busy / steps * 1e3, 3),
            "device_wait_ms_per_step": round(delta["device_wait_seconds"] / steps * 1e3, 3),
            "following_ms_per_step": round(delta["grammar_seconds"] / steps * 1e3, 3),
            "phase_ms_per_step": per_step, "admitted_chained": int(delta["sequences_admitted_chained"]),
            "prompt_passes_chained": int(delta["prompt_passes_chained"]),
            "taken_over": int(delta["sequences_taken_over"]),
            "tokens_prefilled": int(delta["tokens_prefilled"]),
            "errors": len(errors),
            "first_error": errors[0][:300] if errors else None}


def load_points(port: int, folder: Path, args: argparse.Namespace, eos: int,
                profile: Callable[[], None]) -> list[dict[str, Any]]:
    name, endpoint = served_name(port), f"127.0.0.1:{port}"
    env = {**os.environ, **OFFLINE_ENV}
    n, streams, rounds, prompt = args.new_tokens, args.streams, args.rounds, args.prompt_tokens

    def window(start: Any, end: Any) -> Window | None:
        """With ``--window``: the steady-state window (its edges read the counters)."""
        if start is None or not args.window:
            if start:
                start()
            return None
        return Window(args.window, start, end, ramp=args.ramp)

    def free(s: int, r: int, start: Any = None, end: Any = None) -> tuple[float, list[str]]:
        return asyncio.run(free_streams(port, name, s, r, n, prompt, eos, window(start, end)))

    def openai(s: int, r: int, schema: dict[str, Any] | None, start: Any = None,
               end: Any = None) -> tuple[float, list[str]]:
        seconds, _, errors = asyncio.run(openai_completions(port, name, s, r, n, prompt, eos, schema,
                                                            window(start, end)))
        return seconds, errors

    def lmql_programs(start: Any, end: Any) -> tuple[float, list[str]]:
        steady = Window(args.window, start, end, ramp=args.ramp) if args.window else None
        seconds, _, errors = program_clients(endpoint, folder, streams, args.client_procs, rounds, n, env,
                                             (lambda: None) if steady else start, steady)
        return seconds, errors

    free(min(8, streams), 1)  # warm-up: each path once (the programs warm up in their clients)
    points = []
    if args.only in (None, "a", "ab"):
        points += [measured(port, f"(a) {streams} free LMTP streams",
                            lambda start, end: free(streams, rounds, start, end), profile),
                   measured(port, f"(a) {streams} constrained LMQL programs", lmql_programs, profile)]
    if args.only in (None, "b", "ab"):
        openai(min(8, streams), 1, None)
        openai(min(8, streams), 1, SCHEMA)
        points += [measured(port, f"(b) {streams} free OpenAI completions",
                            lambda start, end: openai(streams, rounds, None, start, end), profile),
                   measured(port, f"(b) {streams} OpenAI JSON-schema completions",
                            lambda start, end: openai(streams, rounds, SCHEMA, start, end), profile)]
    return points


def single_programs(port: int, folder: Path, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """(d) on our server: the server path and the client path, one program at a time."""
    env = {**os.environ, **OFFLINE_ENV}
    endpoint = f"127.0.0.1:{port}"
    return {SERVER_PATH: runner_records(SERVER_PATH, sys.executable, endpoint, folder, args.reps, env),
            CLIENT_PATH: runner_records(CLIENT_PATH, sys.executable, endpoint, folder, args.reps,
                                        {**env, "LMQL_SERVER_CONSTRAINTS": "off"})}


def lmql_073_programs(folder: Path, args: argparse.Namespace,
                      device: list[str]) -> list[dict[str, Any]] | None:
    if args.lmql_python:
        python, env = args.lmql_python, lmql_073_env(None, None)
    elif args.wheels:
        python, env = sys.executable, lmql_073_env(install_wheels(args.wheels, LMQL_SITE), None)
    else:
        return None
    command = [python, "-c", LMQL_073_SERVE, str(folder), "--static", *device]
    return side_records(LMQL, command, env, python, folder, args.reps)


def main() -> None:
    args = parse_args()
    if args.wheels:
        install_llguidance(args.wheels)
    model = bench_model(args.model)
    eos = model.eos_token_id() or 50256
    device = [] if args.cpu else ["--cuda", "--dtype", model.dtype]
    chain = ["--chain_steps", "True"] if args.chain_steps else []
    chain += ["--openai-processes", str(args.openai_processes)] if args.openai_processes else []
    port = free_port()
    started = time.monotonic()
    counted = ["--sync-points"] * args.sync_points + ["--count-calls"] * args.count_calls  # (no stacks then)
    sampler, profile = wrapped(args.sample_stacks, *counted, *(["--interval-ms", "0"] if counted else []))
    server = start_server([sys.executable, *sampler, "-m", "lmql_core", "serve-model", str(model.folder),
                           *device, *chain, "--port", str(port)], port, env={**os.environ, **OFFLINE_ENV})
    try:
        print(f"our server ready in {time.monotonic() - started:.0f} s", flush=True)
        points = load_points(port, model.folder, args, eos, profile)
        report_points(points)
        singles = single_programs(port, model.folder, args) if args.only is None else {}
    finally:
        server.terminate()
        server.wait(60)
    if singles:
        theirs = lmql_073_programs(model.folder, args, device)
        if theirs is not None:
            singles[LMQL] = theirs
        report_singles(singles, args)
    print(f"wall time {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "constraints_gpu.json").write_text(json.dumps({"points": points, "singles": singles},
                                                                  indent=1))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: gpt2-medium (gpt2-micro-50k with --cpu)")
    parser.add_argument("--cpu", action="store_true", help="serve on the CPU at small sizes (a smoke run)")
    parser.add_argument("--streams", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--client-procs", type=int, help="processes running the LMQL programs of (a)")
    parser.add_argument("--reps", type=int, help="timed runs of each single program (d)")
    parser.add_argument("--wheels", type=Path, help="a folder with llguidance's and LMQL 0.7.3's wheels")
    parser.add_argument("--lmql-python", help="python of an environment with lmql==0.7.3 (not --wheels)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sample-stacks", type=Path, metavar="DIR",
                        help="sample the server's threads over each point: DIR/window-N.txt")
    parser.add_argument("--sync-points", action="store_true",
                        help="with --sample-stacks: count where the host waits for the GPU, by stack "
                             "(no stacks sampled)")
    parser.add_argument("--count-calls", action="store_true",
                        help="with --sample-stacks: count the engine thread's C calls by caller (slow)")
    parser.add_argument("--only", choices=["a", "b", "ab"],
                        help="only point (a), (b) or both, with (c)'s shares; no (d)")
    parser.add_argument("--window", type=float, default=0.0, metavar="SECONDS",
                        help="(a), (b): measure a steady state instead of whole runs: every client "
                             "keeps requests (programs) in flight, one after another, and the counters "
                             "are read over SECONDS after --ramp (no tail of the slowest clients' last "
                             "requests, whose lengths differ between the kinds of program)")
    parser.add_argument("--ramp", type=float, default=1.0, metavar="SECONDS",
                        help="with --window: how long the clients run before it starts")
    parser.add_argument("--openai-processes", type=int, default=0,
                        help="(b): the server's OpenAI front-end processes (default 0: its event loop)")
    parser.add_argument("--chain-steps", action="store_true",
                        help="chained steps on the CPU too (a GPU with CUDA graphs chains anyway): "
                             "counts the steps that chain, as the GPU would")
    args = parser.parse_args()
    small = {"model": "gpt2-micro-50k", "streams": 8, "rounds": 1, "new_tokens": 24, "client_procs": 2,
             "reps": 1}
    full = {"model": "gpt2-medium", "streams": 64, "rounds": 2, "new_tokens": 128, "client_procs": 4,
            "reps": 3}
    for key, value in (small if args.cpu else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def report_points(points: list[dict[str, Any]]) -> None:
    # tokens a step: the batch's rows that produced a token (its occupancy, forced tokens aside)
    print("| point | tokens | s | tok/s | vs free | steps (chained) | tokens a step | engine busy "
          "| mask fill µs/step | fill | wait | following | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, p in enumerate(points):
        ratio = f"{p['tok_per_s'] / points[i - 1]['tok_per_s']:.2f}x" if i % 2 else "-"
        print(f"| {p['point']} | {p['tokens']} | {p['seconds']} | {p['tok_per_s']} | {ratio} "
              f"| {p['steps']} ({p['chained']}) | {p['tokens'] / max(1, p['steps']):.1f} "
              f"| {p['busy_share']:.0%} | {p['fill_us_per_step']} "
              f"| {p['fill_share']:.1%} | {p['wait_share']:.1%} "
              f"| {p['following_share']:.1%} | {p['errors']} |")
    for p in points:
        if p["chain_breaks"]:
            reasons = ", ".join(f"{k} {v}" for k, v in p["chain_breaks"].items())
            print(f"steps not chained ({p['point']}), by reason: {reasons}; forced tokens fed in "
                  f"chained steps: {p['forced_chained']}")
    print("| point | busy ms/step | device wait | following | launch | deliver | collect | schedule "
          "| admitted beside chained steps (passes) | next holes in the last one's cache | prompt tokens |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in points:
        phase = p["phase_ms_per_step"]
        print(f"| {p['point']} | {p['busy_ms_per_step']} | {p['device_wait_ms_per_step']} "
              f"| {p['following_ms_per_step']} | " + " | ".join(str(phase.get(k, "-")) for k in
                                                             ("launch", "deliver", "collect", "schedule"))
              + f" | {p['admitted_chained']} ({p['prompt_passes_chained']}) | {p['taken_over']} "
              f"| {p['tokens_prefilled']} |")
    for p in points:
        if p["first_error"]:
            print(f"first error ({p['point']}): {p['first_error']}")
    print("targets: (a), (b) at least 0.80x; (c) wait + following under 5% of the engine's busy time",
          flush=True)


def report_singles(singles: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    sides = list(singles)
    print(f"(d) each program alone, {args.reps} timed runs (median ms; requests/program on our server)")
    print("| program | " + " | ".join(sides) + " | requests (server path) | vs client masks "
          "| vs lmql 0.7.3 |")
    print("| --- " * (len(sides) + 4) + "|")
    for program in PROGRAMS:
        timed = {side: [r for r in records if r["program"] == program and r["run"] >= 0]
                 for side, records in singles.items()}
        ms = {side: statistics.median(r["ms"] for r in runs) for side, runs in timed.items()}
        requests = sorted({r["requests"] for r in timed[SERVER_PATH]})
        client = f"{ms[CLIENT_PATH] / ms[SERVER_PATH]:.1f}x"
        lmql = f"{ms[LMQL] / ms[SERVER_PATH]:.1f}x" if LMQL in ms else "not run"
        print(f"| {program} | " + " | ".join(f"{ms[s]:.1f}" for s in sides) +
              f" | {', '.join(f'{r:g}' for r in requests if r is not None)} | {client} | {lmql} |")
        for side, runs in timed.items():
            for mine, other in zip(timed[SERVER_PATH], runs, strict=True):
                if mine["values"] != other["values"]:
                    print(f"MISMATCH {program} run {mine['run']}: {SERVER_PATH} {mine['values']} != "
                          f"{side} {other['values']}")
    print("targets: at least 1x the client masks, 20x LMQL 0.7.3 (runtime + server)")


if __name__ == "__main__":
    main()
