"""The differential query suite (``tests/compat/queries.py``) run through ``query_programs.py``
against two servers, for the tests of the ``openai:`` transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

COMPAT = ROOT / "tests" / "compat"


def run_programs(endpoint: str, folder: str, *selection: str, served_model: str | None = None,
                 ) -> dict[str, dict[str, Any]]:
    """Each program's record (``result`` or ``error``) with this runtime against ``endpoint``."""
    env = {**os.environ, "COMPAT_SERVED_MODEL": served_model or ""}
    result = subprocess.run([sys.executable, str(COMPAT / "query_programs.py"), endpoint, folder, *selection],
                            capture_output=True, text=True, timeout=1200, env=env)
    records = [json.loads(line[len("COMPAT "):]) for line in result.stdout.splitlines() if line.startswith("COMPAT ")]
    assert records, result.stderr
    return {r["check"]: r for r in records}


def differences(ours: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]], folder: str,
                ) -> list[tuple[str, Any, Any]]:
    """Programs whose results differ (sampled ones: whose shape is wrong), or that failed."""
    sys.path.insert(0, str(COMPAT))
    try:
        from queries import PROGRAMS
        from query_compare import sampled_shape, token_counter
        from run_compat import same
    finally:
        sys.path.remove(str(COMPAT))
    count_tokens = token_counter(folder)
    failed = []
    for program in PROGRAMS:
        name = program["name"]
        if name not in ours:
            continue
        mine, theirs = ours[name], reference[name]
        if "error" in mine or "error" in theirs:
            failed.append((name, mine.get("error"), theirs.get("error")))
        elif program["kind"] == "sampled":  # different draws: the shape only
            if not sampled_shape(program["shape"], count_tokens)(mine["result"]):
                failed.append((name, mine["result"], "shape"))
        elif not same(mine["result"], theirs["result"]):
            failed.append((name, mine["result"], theirs["result"]))
    return failed


def program_names() -> list[str]:
    sys.path.insert(0, str(COMPAT))
    try:
        from queries import PROGRAMS
    finally:
        sys.path.remove(str(COMPAT))
    return [p["name"] for p in PROGRAMS]
