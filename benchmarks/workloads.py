"""Issue 19's workloads (benchmarks/workload_catalogue.py) through our server and, in the same
run, LMQL 0.7.3's as the yardstick. Prompts are fresh in every run; each server's first run is
its "first after Ready" row, the rest "warm".

Full run (the lead's), under 9 minutes on a two-GPU H100 host. Once, in the checkout that the
device tool sends: `bash benchmarks/fetch_lmql073_wheels.sh` (LMQL 0.7.3's wheels into .whl/).
Then one `run` call, kind nvidia-h100-x2, carry [".whl"], timeout_s 600:

    python3 -m pip install -q --no-deps --no-build-isolation . ./plugins/hf && \\
    PYTHONUNBUFFERED=1 python3 benchmarks/workloads.py --lmql-wheels .whl --out $OUT

Ours runs on GPU 0 and LMQL's on GPU 1 at once (on one GPU: one after the other, which takes
longer than one call: run a selection per call). LMQL 0.7.3 makes tens to hundreds of tok/s: it
runs each point once, at most --lmql-new-tokens (128) per stream, and skips the offline workload
(its ratio prints as —). No run starts after --budget-s (480) seconds.

    python benchmarks/workloads.py --workloads short,score      # a selection, by name
    python benchmarks/workloads.py --smoke                      # CPU, lmql-tiny, a few tokens each
    python benchmarks/workloads.py --sizes small                # the real models, a few tokens each

Other arguments go to our server (``--max_batch 256``). Prints one table; with --out writes
workloads.md and results.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmtp_load  # noqa: E402
from bench_models import BenchModel, bench_model  # noqa: E402
from processes import LMQL_073_SERVE, OFFLINE_ENV, free_port, install_wheels, lmql_073_env, start_server  # noqa: E402
from workload_catalogue import FIRST_TARGET, Point, Workload, select  # noqa: E402
from workload_table import print_table  # noqa: E402

OURS, LMQL = "lmql-core", "lmql 0.7.3"
Plan = list[tuple[BenchModel, list[tuple[Workload, Point]]]]


def plan_for(workloads: list[Workload], args: argparse.Namespace) -> Plan:
    """The points to run, grouped by model folder (one server each), in the catalogue's order."""
    groups: dict[Path, tuple[BenchModel, list[tuple[Workload, Point]]]] = {}
    for workload in workloads:
        model = bench_model("lmql-tiny" if args.smoke else workload.model)
        points = [p.shrunk() if args.sizes == "small" else p for p in workload.points]
        groups.setdefault(model.folder, (model, []))[1].extend((workload, p) for p in points)
    return list(groups.values())


class Lane:
    """One server kind, its servers started one model after another on one GPU (or the CPU)."""

    def __init__(self, server: str, args: argparse.Namespace, gpu: str | None, deadline: float) -> None:
        self.server, self.args, self.gpu, self.deadline = server, args, gpu, deadline
        self.rows: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str]] = set()  # (workload, point) run on this lane so far

    def run(self, plan: Plan) -> list[dict[str, Any]]:
        for model, points in plan:
            if self.server == LMQL:
                points = [(w, p) for w, p in points if p.lmql]
            if points and self.time_left() > 0:
                self.serve(model, points)
        return self.rows

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def serve(self, model: BenchModel, points: list[tuple[Workload, Point]]) -> None:
        port = free_port()
        started = time.monotonic()
        output = self.output()
        try:
            proc = start_server(self.command(model, port), port, timeout=max(self.time_left(), 1),
                                env=self.env(), **output)
        except (RuntimeError, TimeoutError) as e:
            self.rows.append({"server": self.server, "model": model.name, "error": f"start: {e}"})
            return
        finally:
            if hasattr(output.get("stdout"), "close"):
                output["stdout"].close()  # the server has its own copy
        try:
            if self.server == LMQL:  # it listens before its model has loaded: wait for one token
                self.load(model, port, Point("load", 1, new_tokens="1"), self.time_left())
            self.rows.append({"server": self.server, "model": model.name, "startup_s":
                              round(time.monotonic() - started, 1)})
            for run, (workload, point) in enumerate(self.schedule(points)):
                self.rows.append(self.measure(model, port, workload, point, run))
        except Exception as e:  # its model did not load: a row says so, and the next model runs
            self.rows.append({"server": self.server, "model": model.name, "error": f"load: {e}"[:300]})
        finally:
            proc.terminate()
            proc.wait()

    def schedule(self, points: list[tuple[Workload, Point]]) -> Iterator[tuple[Workload, Point]]:
        for workload, point in points:
            for _ in range(point.repeats if self.server == OURS else 1):
                yield workload, point

    def measure(self, model: BenchModel, port: int, workload: Workload, point: Point,
                run: int) -> dict[str, Any]:
        row = {"server": self.server, "model": model.name, "workload": workload.name, "point": point.label,
               "phase": self.phase(workload, point, run), "target": point.target}
        if self.server == LMQL and not point.score:
            point = point.at_most(self.args.lmql_new_tokens)
        if self.time_left() <= 0:
            return dict(row, error="skipped: time budget spent")
        try:
            return dict(row, **self.load(model, port, point, self.time_left()))
        except Exception as e:  # a failed run is a row of the table, and the next one runs
            return dict(row, error=f"{type(e).__name__}: {e}"[:300])

    def phase(self, workload: Workload, point: Point, run: int) -> str:
        """The server's first run, or a warm one: the first of its point on this server, or again."""
        again = (workload.name, point.label) in self.seen
        self.seen.add((workload.name, point.label))
        return "first after Ready" if run == 0 else ("warm, again" if again else "warm")

    def load(self, model: BenchModel, port: int, point: Point, timeout: float) -> dict[str, Any]:
        config = model.config()
        argv = ["--endpoint", f"127.0.0.1:{port}", "--model", str(model.folder), "--no-warmup", "--json",
                "--vocab-size", str(config["vocab_size"]), *point.load_args()]
        if (eos := model.eos_token_id()) is not None:
            argv += ["--eos-token-id", str(eos)]
        if self.args.repeat_prompts:
            argv.append("--repeat-prompts")
        if timeout > 0:
            argv += ["--timeout", str(round(timeout, 1))]
        return lmtp_load.main(argv)

    def command(self, model: BenchModel, port: int) -> list[str]:
        device = ["--cuda", "--dtype", model.dtype] if self.gpu is not None else []
        if self.server == OURS:
            return [sys.executable, "-m", "lmql_core", "serve-model", str(model.folder), "--port", str(port),
                    *device, *self.args.server_args]
        return [self.args.lmql_python or sys.executable, "-c", LMQL_073_SERVE, str(model.folder),
                "--port", str(port), "--static", *device]

    def output(self) -> dict[str, Any]:
        """Our server's messages go to the console; LMQL's (noisy) to lmql073.log under --out."""
        if self.server == OURS:
            return {}
        if self.args.out is None:
            return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.args.out.mkdir(parents=True, exist_ok=True)
        log = open(self.args.out / "lmql073.log", "ab")  # noqa: SIM115  (closed once the server has it)
        return {"stdout": log, "stderr": subprocess.STDOUT}

    def env(self) -> dict[str, str]:
        if self.server == LMQL:
            return lmql_073_env(self.args.lmql_site, self.gpu)
        env = {**os.environ, **OFFLINE_ENV}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def gpus(args: argparse.Namespace) -> int:
    if args.smoke:
        return 0
    import torch

    return torch.cuda.device_count()


def start_lmql_lane(args: argparse.Namespace, argv: list[str], rows_file: Path) -> subprocess.Popen[bytes]:
    """LMQL 0.7.3's lane as a process of its own, so its load driver never shares our driver's
    interpreter."""
    budget = str(round(args.deadline - time.monotonic()))
    return subprocess.Popen([sys.executable, __file__, *argv, "--lane", "lmql", "--rows-file", str(rows_file),
                             "--budget-s", budget])


def lmql_rows(proc: subprocess.Popen[bytes], rows_file: Path,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        proc.wait(timeout=max(args.deadline - time.monotonic(), 0) + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if rows_file.exists():
        rows: list[dict[str, Any]] = json.loads(rows_file.read_text())
        return rows
    return [{"server": LMQL, "model": "", "error": f"its lane ended with {proc.returncode} and no rows"}]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="all", help="all, or names from workload_catalogue.py")
    parser.add_argument("--smoke", action="store_true", help="CPU, lmql-tiny for every model, small sizes")
    parser.add_argument("--sizes", choices=["full", "small"], default="full")
    parser.add_argument("--repeat-prompts", action="store_true", help="the same prompts in every run")
    parser.add_argument("--lmql-wheels", type=Path, help="LMQL 0.7.3's wheels (installed into --lmql-site)")
    parser.add_argument("--lmql-site", type=Path, help="a folder holding LMQL 0.7.3 (PYTHONPATH)")
    parser.add_argument("--lmql-python", help="python of an environment with lmql==0.7.3 (instead of a site)")
    parser.add_argument("--lmql-new-tokens", type=int, default=128,
                        help="new tokens per LMQL stream, at most")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="no server or run starts after this many seconds (a run in flight is cut there)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None)
    parser.add_argument("--lane", choices=["lmql"], help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args, server_args = parser.parse_known_args(argv)
    args.server_args = server_args
    if args.smoke:
        args.sizes = "small"
    if args.lmql_wheels and not args.lmql_site:
        args.lmql_site = Path("/tmp/lmql073-site")
    args.started = time.monotonic()
    args.deadline = args.started + args.budget_s
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = plan_for(select(args.workloads), args)  # builds the models first
    count = gpus(args)
    if args.lane:  # the LMQL lane's own process
        rows = Lane(LMQL, args, "1" if count > 1 else ("0" if count else None), args.deadline).run(plan)
        args.rows_file.write_text(json.dumps(rows))
        return rows
    with_lmql = bool(args.lmql_site or args.lmql_python)
    if args.lmql_wheels:
        install_wheels(args.lmql_wheels, args.lmql_site)
    rows_file = Path(os.environ.get("TMPDIR", "/tmp"), f"lmql073-rows-{os.getpid()}.json")
    lmql = start_lmql_lane(args, argv, rows_file) if with_lmql and count > 1 else None
    rows = Lane(OURS, args, "0" if count else None, args.deadline).run(plan)
    if with_lmql:
        lmql = lmql or start_lmql_lane(args, argv, rows_file)
        rows += lmql_rows(lmql, rows_file, args)
    print_table(rows, notes(args, count, with_lmql), args.out)
    return rows


def notes(args: argparse.Namespace, count: int, with_lmql: bool) -> list[str]:
    gpus_used = "ours on GPU 0, LMQL 0.7.3 on GPU 1 at once" if count > 1 else "servers one after the other"
    lmql = (f"LMQL 0.7.3: each point once, at most {args.lmql_new_tokens} new tokens per stream, not run "
            "where the ratio is — (the offline workload)") if with_lmql else \
        "LMQL 0.7.3 not run (no --lmql-wheels, --lmql-site or --lmql-python)"
    return [f"{count} GPU(s); {gpus_used}", lmql, f"first-after-Ready target: {FIRST_TARGET}",
            f"wall time {time.monotonic() - args.started:.0f} s (models built, servers started and run)"]


if __name__ == "__main__":
    main()
