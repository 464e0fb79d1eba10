"""The compatibility runner's verdicts (tests/compat/run_compat.py): an error is never a pass
unless expected, a check script must exit 0 having run all it planned, and checks a crash left
unrun fail instead of vanishing from the table."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "compat"))
import run_compat  # noqa: E402

ERROR = {"check": "generate", "error": "LMTPStreamError: boom"}
RESULT = {"check": "generate", "result": "Hello"}


def test_the_same_error_on_both_servers_fails_the_row() -> None:
    row = run_compat.compare("s", "generate", ERROR, ERROR)
    assert not row.ok and row.how == "error"
    assert not run_compat.compare("s", "generate", RESULT, ERROR).ok
    assert run_compat.compare("s", "generate", RESULT, dict(RESULT)).ok


def test_an_expected_error_passes_only_where_both_sides_raise_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(run_compat.EXPECTED_ERRORS, "generate", "LMTPStreamError")
    assert run_compat.compare("s", "generate", ERROR, ERROR).ok
    assert not run_compat.compare("s", "generate", ERROR, {"check": "generate", "error": "KeyError: 1"}).ok
    assert run_compat.compare("s", "generate", RESULT, dict(RESULT)).ok  # results still compare
    assert not run_compat.compare("s", "generate", ERROR, RESULT).ok


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "checks.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


PLAN = """
    import json, sys
    print("COMPAT_PLAN " + json.dumps(["generate", "score", "sample"]), flush=True)
    print("COMPAT " + json.dumps({"check": "generate", "result": "Hello"}), flush=True)
"""


def run(tmp_path: Path, body: str) -> run_compat.ProgramRun:
    return run_compat.run_programs(script(tmp_path, body), {}, tmp_path / "log", "client on server")


def test_checks_after_a_crash_fail_instead_of_vanishing(tmp_path: Path) -> None:
    crashed = run(tmp_path, PLAN + "    raise SystemExit('crashed')\n")
    assert crashed.returncode == 1 and crashed.names() == ["generate", "score", "sample"]
    rows = run_compat.build_rows(crashed, crashed, crashed, crashed)
    verdicts = {(r.section, r.check): r.ok for r in rows}
    section = "lmql-core client: LMQL 0.7.3 server vs lmql-core server"
    assert verdicts[section, "generate"] and not verdicts[section, "score"] and not verdicts[section, "sample"]
    assert not verdicts["check scripts", "client on server"]


def test_a_script_that_exits_non_zero_fails_its_row(tmp_path: Path) -> None:
    everything = PLAN + """
    for name in ("score", "sample"):
        print("COMPAT " + json.dumps({"check": name, "result": 1}), flush=True)
"""
    assert run_compat.script_row(run(tmp_path, everything)).ok
    failed = run_compat.script_row(run(tmp_path, everything + "    sys.exit(3)\n"))
    assert not failed.ok and "exit 3" in failed.right["result"]
    silent = run_compat.script_row(run(tmp_path, "raise ImportError('no lmql here')\n"))
    assert not silent.ok and "0 of ? checks" in silent.right["result"]
