"""Loud skips: a test module skipped whole (an ``importorskip`` at its top: an optional
dependency missing) is named in a summary at the end of every run; where skips are not allowed
(``CI`` set, or ``LMQL_STRICT_SKIPS=1`` as the nox session sets it) such a skip, or a run in
which no test passed, fails the run."""

from __future__ import annotations

import os
from typing import Any

import pytest

_skipped_modules: list[tuple[str, str]] = []
_passed = 0


def strict() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("LMQL_STRICT_SKIPS") == "1"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and report.nodeid.endswith(".py"):
        longrepr: Any = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skipped_modules.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if strict() and exitstatus == pytest.ExitCode.OK and (_skipped_modules or not _passed):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write = terminalreporter.write_line
    if _skipped_modules:
        verdict = "FAILS the run (CI or LMQL_STRICT_SKIPS)" if strict() else "not run"
        terminalreporter.section(f"{len(_skipped_modules)} test modules skipped whole: {verdict}", red=True)
        for nodeid, reason in _skipped_modules:
            write(f"SKIPPED MODULE {nodeid}: {reason}", red=True, bold=True)
    if strict() and not _passed:
        write("no test passed: this run checked nothing, and fails", red=True, bold=True)
