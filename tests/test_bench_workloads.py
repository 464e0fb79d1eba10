"""The benchmark harness (benchmarks/workloads.py) on the CPU: every workload of issue 19 runs
against a real server on lmql-tiny with a few tokens each, so a broken harness shows up here
and not on the GPU machine. No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server

sys.path.insert(0, str(ROOT / "benchmarks"))
import lmtp_load  # noqa: E402
from workload_catalogue import WORKLOADS  # noqa: E402


def drawn(*argv: str) -> list[dict]:
    args = lmtp_load.parse_args(["--streams", "4", *argv])
    return lmtp_load.draw_requests(args, lmtp_load.prompt_rng(args), vocab=2048, eos=2)


def test_prompts_are_fresh_in_every_run_unless_repeated() -> None:
    assert drawn()[0]["prompt"] != drawn()[0]["prompt"]
    assert drawn("--repeat-prompts") == drawn("--repeat-prompts")
    assert drawn("--seed", "7") == drawn("--seed", "7") != drawn("--seed", "8")


def test_lengths_drawn_from_ranges_and_score_requests() -> None:
    requests = drawn("--streams", "64", "--prompt-len", "3-9", "--new-tokens", "5-6")
    assert {len(r["prompt"]) for r in requests} <= set(range(3, 10))
    assert {r["max_tokens"] for r in requests} == {5, 6}
    assert all(r["logit_bias"] == {"2": -100} for r in requests)
    (score,) = drawn("--streams", "1", "--prompt-len", "8", "--score", "3")
    assert (len(score["prompt"]), len(score["scored"])) == (8, 3)
    assert "max_tokens" not in score


@pytest.mark.timeout(180)
def test_every_workload_runs_on_lmql_tiny(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "workloads.py"), "--smoke",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    runs = [r for r in rows if "workload" in r]
    assert [r for r in rows if "error" in r] == []
    assert {r["workload"] for r in runs} == {w.name for w in WORKLOADS}
    assert sum(len(w.points) for w in WORKLOADS) == len({(r["workload"], r["point"]) for r in runs})
    assert runs[0]["phase"] == "first after Ready"
    assert {r["phase"] for r in runs[1:]} == {"warm", "warm, again"}
    assert all(r["tokens"] > 0 and r["tok_per_s"] > 0 for r in runs)
    scores = [r for r in runs if r["workload"] == "score"]
    assert scores and all(r["new_tokens"] == "score 4" and r["tokens"] == 4 * r["streams"] for r in scores)
    table = (tmp_path / "workloads.md").read_text()
    assert table.startswith("| workload | model | point | server | phase |") and "first after Ready" in table


def test_the_cpu_benchmark_gives_each_of_our_points_its_ratio_to_lmqls_same_point() -> None:
    import cpu_bench

    def run(server: str, model: str, streams: int, stagger: float, rate: float) -> dict:
        return {"server": server, "model": model, "phase": "warm", "streams": streams, "stagger_ms": stagger,
                "tok_per_s": rate, "ttft_median_ms": 1.0, "ttft_p90_ms": 2.0, "itl_median_ms": 3.0}

    ours, theirs = cpu_bench.OURS, "lmql 0.7.3"
    rows = [run(ours, "a", 8, 0.0, 900.0), run(ours, "a", 8, 20.0, 100.0), run(ours, "b", 8, 0.0, 50.0),
            run(theirs, "a", 8, 0.0, 300.0), run(theirs, "a", 8, 20.0, 400.0)]
    ratios = [line.split("|")[-2].strip() for line in cpu_bench.table(rows).splitlines()[2:]]
    assert ratios == ["3.00x", "0.25x", "", "", ""]


def test_the_cpu_step_benchmark_times_both_steps_on_lmql_tiny() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_step_bench.py"), "--model", "lmql-tiny",
                          "--rows", "1,3"], capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| lmql-tiny")]
    assert [r[1:3] for r in rows] == [["False", "False"], ["True", "False"], ["True", "auto"]]
    assert all(float(cell) > 0 for r in rows for cell in r[3:5])
    assert rows[0][5] == "" and all(r[5].startswith("{1: ") for r in rows[1:])  # the lean head's forms


def test_the_scheduler_cost_benchmark_preempts_and_admits_by_the_share_rule() -> None:
    """benchmarks/scheduler_cost.py at a batch of 16: its contention points preempt what the
    share rule frees (2 newcomers x 2 requests, share 16 // 3 = 5: the 4 they want; 7 x 2,
    share 16 // 8 = 2: the hog keeps 2 of 16), and both engine points run."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scheduler_cost.py"), "--max-batch", "16",
                          "--clients", "4", "--repeats", "1", "--engine-steps", "20", "--breakdown"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    points = [r[0] for r in rows]
    assert "admit 16 of 32 waiting, 4 clients" in points
    assert "preempt 4 of one client's 16 for 2 newcomers" in points
    assert "preempt 14 of one client's 16 for 7 newcomers" in points
    engine = [r for r in rows if r[0] in ("4 clients x 4 streams", "1 client x 32 streams + 2 x 4")]
    assert len(engine) == 2 and all(int(r[1]) > 0 for r in engine)  # steps ran
    assert sum(r[0] == "Scheduler.schedule" for r in rows) == 2  # a breakdown per engine point


@pytest.mark.timeout(180)
def test_the_load_driver_runs_through_openais_api(tiny_server: Server) -> None:
    results = {}
    for transport in ([], ["--openai"], ["--openai", "--score", "3"], ["--openai", "--processes", "2"]):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lmtp_load.py"), "--endpoint",
                              tiny_server.endpoint, "--streams", "3", "--new-tokens", "5", "--json", *transport],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        results[" ".join(transport)] = json.loads(out.stdout)
    assert results[""]["transport"] == "lmtp" and results["--openai"]["transport"] == "openai"
    assert results[""]["tokens"] == results["--openai"]["tokens"] == 15
    assert results["--openai --score 3"]["tokens"] == 9
    assert results["--openai --processes 2"]["tokens"] == 15  # the streams split 2 + 1, merged


@pytest.mark.timeout(120)
def test_the_openai_driver_keeps_its_connections_alive_as_the_openai_client_does(tiny_server: Server) -> None:
    """The warm-up's connections carry the measured streams (the official client's pool reuses
    them too); an error answer is the stream's error and leaves its connection usable;
    ``keep_alive=False`` opens one per stream."""
    import asyncio

    from load_targets import run_stream
    from openai_target import OpenAITarget

    request = {"model": "lmql-tiny", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0.0, "top_logprobs": 1}

    async def rounds(keep_alive: bool) -> tuple[list[int], list[int], str]:
        opened, tokens = [], []
        async with OpenAITarget(tiny_server.endpoint, keep_alive=keep_alive) as target:
            for _ in range(3):
                streams = await asyncio.gather(*(run_stream(target, i, request, 0) for i in range(3)))
                tokens += [len(s.arrivals) for s in streams]
                await asyncio.sleep(0.05)  # each answer's last chunk read
                opened.append(len(target.connections))
            failed = await (await target.send("GENERATE", {**request, "model": "no-such-model"})).get()
            again = await run_stream(target, 9, request, 0)
            tokens.append(len(again.arrivals))
            opened.append(len(target.connections))
        return opened, tokens, failed[1]["error"]

    opened, tokens, error = asyncio.run(rounds(keep_alive=True))
    assert tokens == [4] * 10
    assert opened == [3, 3, 3, 3]
    assert error.startswith("HTTP/1.1 404") and "no-such-model" in error
    opened, tokens, _ = asyncio.run(rounds(keep_alive=False))
    assert tokens == [4] * 10 and opened == [3, 6, 9, 11]
