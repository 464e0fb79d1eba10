"""How the `lmql` command and an `import lmql` process end: exit status and time (issue 28)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("lmql_hf")

from tests.conftest import ROOT, Server, run_lmql  # noqa: E402

pytestmark = pytest.mark.hf

# the programs that ended in SIGABRT after printing their result (issue 28, point 0)
CONSTRAINED_NUMBER = '"A number: [N]" where INT(N)\n'
SAMPLED_SET_LOOP = textwrap.dedent("""\
    sample(temperature=0.8)
    "A list of things not to forget at the sea:\\n"
    for i in range(3):
        "- [THING]\\n" where THING in set(["Volleyball", "Sunscreen", "Bathing Suit"])
    """)


@pytest.mark.timeout(900)  # 20 processes loading torch: ~70 s on two idle cores, more when shared
def test_lmql_run_local_exits_0_twenty_times_in_a_row(tmp_path: Path) -> None:
    programs = [tmp_path / "number.lmql", tmp_path / "things.lmql"]
    programs[0].write_text(CONSTRAINED_NUMBER)
    programs[1].write_text(SAMPLED_SET_LOOP)

    def run_ten_in_a_row(lane: int) -> list[subprocess.CompletedProcess[str]]:
        return [run_lmql("run", str(programs[(lane + i) % 2]), "--model", "local:lmql-tiny")
                for i in range(10)]

    with ThreadPoolExecutor(2) as lanes:  # two lanes of ten: the machine's two cores both busy
        results = [r for lane in lanes.map(run_ten_in_a_row, range(2)) for r in lane]
    for result in results:
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
        assert "terminate called" not in result.stderr
        assert "A number: " in result.stdout or "- " in result.stdout, result.stdout


def test_exit_while_the_local_engine_is_mid_step_is_clean() -> None:
    """The deterministic form of the crash: the process ends while the in-process engine is
    inside a step (torch code) for a generation nobody waits for any more."""
    script = textwrap.dedent("""\
        import threading, time
        import lmql
        llm = lmql.model("local:lmql-tiny")
        llm.generate_sync("Hello", max_tokens=2)
        def generate_forever():
            while True:
                llm.generate_sync("Once upon a time", max_tokens=50)
        threading.Thread(target=generate_forever, daemon=True).start()
        time.sleep(1.0)
        print("leaving", flush=True)
        """)
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert "leaving" in result.stdout


def test_ctrl_c_on_an_idle_model_server_exits_within_2_s() -> None:
    """(point 1) It took 8-12 s: the interpreter's exit-time collections over torch's objects."""
    server = Server("lmql-tiny", "--max_batch", "4")
    server.proc.send_signal(signal.SIGINT)
    began = time.monotonic()
    try:
        server.proc.wait(timeout=30)
    finally:
        took = time.monotonic() - began
        output = server.output()
        server.stop()
    assert server.proc.returncode == 0, output
    assert "Traceback" not in output
    assert took < 2.0, f"exited {took:.1f} s after Ctrl-C"
    assert "Loading lmql-tiny with backend 'hf' on CPU (max_batch=4)\n" in output  # once (point 6)
