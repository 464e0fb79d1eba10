"""Differential-suite programs (see queries.py for the format): LMQL programs written for issue 27,
area: nested. Every program here must give identical results under LMQL 0.7.3 and lmql-core."""

from __future__ import annotations

from typing import Any

PROGRAMS: list[dict[str, Any]] = []
