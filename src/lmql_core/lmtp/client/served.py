"""Which models a server serves, from its ``/health``: lets ``lmql generate`` use the one model a
server serves when no ``--model`` is named."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from lmql_core.lmtp.client.transport import normalize_endpoint

HEALTH_TIMEOUT_S = 10.0


def served_models(endpoint: str | None, api_key: str | None = None) -> list[str] | None:
    """The served models' names; None where the server does not say (an LMQL 0.7 server has no
    ``/health``; an unreachable one: the request that follows says why)."""
    url = normalize_endpoint(endpoint).replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/health", headers=headers),
                                    timeout=HEALTH_TIMEOUT_S) as response:
            health: Any = json.loads(response.read())
    except (OSError, ValueError):
        return None
    models = health.get("models") if isinstance(health, dict) else None
    return list(models) if isinstance(models, dict) else None
