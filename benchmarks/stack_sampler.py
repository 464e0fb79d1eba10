"""Where a server's threads spend their wall time, sampled from inside the process (no ptrace):

    python benchmarks/stack_sampler.py --out DIR [--interval-ms 0.5] -m lmql_core serve-model ...

runs the module as ``python -m`` would, with a thread that, while sampling is on, reads every
thread's stack each interval (``sys._current_frames``) and counts them. ``request_toggle(DIR)``
(from the benchmark's process) toggles sampling through a file the thread watches: the first
starts a window, the second writes it to ``DIR/window-N.txt`` (N from 1): per thread, its share of
the samples by innermost function and the collapsed stacks (flamegraph input), so a benchmark can
profile exactly the span it times. (Not a signal: on the GPU machine, windows asked by SIGUSR1
never came back from a server's first start on a fresh machine, Triton compiling its kernels,
in 3 runs of 3, and always from later ones; no error was printed.) The sampler takes
the interpreter's lock once a sample; at 0.5 ms that costs the other threads a few percent.

``--sync-points``: during a window, torch's CUDA sync debug mode is on and every operation that
makes the host wait for the GPU (a blocking copy, ``.item()``, a list used as an index) is counted
by its stack, as thread ``sync:NAME`` (where the host lost its lead on the device); with
``--interval-ms 0`` only those are kept. ``--count-calls``: every call of a C function by the
engine thread (torch's operations among them, each a kernel launch on a GPU) counted by the
function and its caller, as thread ``calls:lmql-engine`` (a profile hook: everything runs slower).
"""

from __future__ import annotations

import argparse
import collections
import runpy
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType

SAMPLED_THREADS = ("lmql", "Main", "asyncio")  # the server's own threads (torch's are left out)
TOGGLE = "toggle"  # the file in --out that asks the sampler to start or end a window


def wrapped(out: Path | None, *flags: str) -> tuple[list[str], Callable[[], None]]:
    """For a benchmark that starts a server with ``python -m ...``: what goes between ``python``
    and ``-m`` to run it under this sampler writing to ``out`` (with ``flags``), and the call that
    starts or ends a window; with ``out`` None, nothing and a call that does nothing."""
    if out is None:
        return [], lambda: None
    return [str(Path(__file__).resolve()), "--out", str(out), *flags], lambda: request_toggle(out)


def request_toggle(out: Path, timeout: float = 5.0) -> None:
    """Ask the sampler of the server started with ``--out out`` to start or end a window, and
    wait until it has (the window's file is written then)."""
    asked = out / TOGGLE
    asked.touch()
    deadline = time.monotonic() + timeout
    while asked.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stack sampler did not answer ({asked} is still there)")
        time.sleep(0.002)


class Sampler:
    def __init__(self, out: Path, interval_s: float, sync_points: bool = False) -> None:
        self.out = out
        self.interval_s = interval_s
        self.sync_points = sync_points
        self.on = threading.Event()
        # a sample taken, a sync point counted or a window written: one at a time (reentrant: a
        # warning may come while its thread counts)
        self.lock = threading.RLock()
        self.shown = warnings.showwarning
        self.window = 0
        self.stacks: collections.Counter[tuple[str, str]] = collections.Counter()
        self.samples = 0
        self.started = 0.0

    def watch(self) -> None:
        """Toggle sampling whenever the benchmark asks (``request_toggle``), and take the samples."""
        me, asked = threading.get_ident(), self.out / TOGGLE
        while True:
            if asked.exists():
                with self.lock:
                    self._toggle()
                asked.unlink()
            if self.on.is_set() and self.interval_s > 0:
                with self.lock:
                    self.sample(me)
            time.sleep(self.interval_s if self.on.is_set() and self.interval_s > 0 else 0.002)

    def _toggle(self) -> None:
        if self.on.is_set():
            self.on.clear()
            self._sync_debug(False)
            self.window += 1
            self.write(self.out / f"window-{self.window}.txt", time.perf_counter() - self.started)
        else:
            self.stacks.clear()
            self.samples = 0
            self.started = time.perf_counter()
            self._sync_debug(True)
            self.on.set()

    def _sync_debug(self, on: bool) -> None:
        torch = sys.modules.get("torch")
        if self.sync_points and torch is not None and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn" if on else "default")

    def synced(self, message: object, category: type[Warning], *_: object, **__: object) -> None:
        """``warnings.showwarning``: a sync point counted by its stack (other warnings shown)."""
        if "synchroniz" not in str(message):
            self.shown(message, category, *_, **__)  # type: ignore[arg-type]
            return
        frames = traceback.extract_stack()[:-1]
        stack = ";".join(f"{f.name} ({Path(f.filename).name}:{f.lineno})" for f in frames
                         if "warnings" not in f.filename)
        with self.lock:
            self.stacks[(f"sync:{threading.current_thread().name}", stack)] += 1

    def count_call(self, frame: FrameType, event: str, arg: object) -> None:
        """A ``threading.setprofile`` hook: the engine thread's C calls, counted while sampling."""
        if event != "c_call" or not self.on.is_set() or threading.current_thread().name != "lmql-engine":
            return
        owner = getattr(arg, "__self__", None)
        name = getattr(arg, "__qualname__", str(arg))
        if owner is not None and not isinstance(owner, type) and type(owner).__module__ != "builtins":
            name = f"{type(owner).__name__}.{getattr(arg, '__name__', name)}"
        code = frame.f_code
        caller = f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})"
        with self.lock:
            self.stacks[("calls:lmql-engine", f"{caller};{name}")] += 1

    def sample(self, me: int) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, str(ident))
            if ident != me and name.startswith(SAMPLED_THREADS):
                self.stacks[(name, collapse(frame))] += 1
        self.samples += 1

    def write(self, path: Path, seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for (thread, stack), n in self.stacks.items():
            by_thread[thread][stack.rsplit(";", 1)[-1]] += n
        lines = [f"# {self.samples} samples over {seconds:.3f} s"]
        for thread, leaves in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
            lines.append(f"## thread {thread}")
            lines += [f"{n / max(1, self.samples):7.1%}  {leaf}" for leaf, n in leaves.most_common(25)]
        lines.append("## collapsed stacks")
        lines += [f"{thread};{stack} {n}" for (thread, stack), n in self.stacks.most_common()]
        path.write_text("\n".join(lines) + "\n")


def collapse(frame: FrameType | None) -> str:
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})")
        frame = frame.f_back
    return ";".join(reversed(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval-ms", type=float, default=0.5, help="0: no stacks sampled")
    parser.add_argument("--sync-points", action="store_true",
                        help="count the operations that make the host wait for the GPU, by stack")
    parser.add_argument("--count-calls", action="store_true",
                        help="count the engine thread's calls of C functions, by caller")
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args()
    sampler = Sampler(args.out, args.interval_ms / 1000, args.sync_points)
    if args.sync_points:
        warnings.simplefilter("always")
        warnings.showwarning = sampler.synced
    if args.count_calls:
        threading.setprofile(sampler.count_call)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / TOGGLE).unlink(missing_ok=True)
    threading.Thread(target=sampler.watch, name="stack-sampler", daemon=True).start()
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
