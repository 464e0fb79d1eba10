"""Finding a model on disk or on the Hugging Face hub, failing fast where the hub is out of reach.

Without a network the hub client retries for about 26 s before it gives up; one short probe
tells the same at once. Free of torch: the client-side tokenizer uses it too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lmql_core.plugin import LMQLError
from lmql_hf.bundled import bundled_path

HUB_PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def locate(name: str, revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """Where ``from_pretrained`` finds ``name``, plus the arguments that keep it off the network
    when it must: a bundled model, a folder, or a hub name, from the cache when the hub cannot be
    reached. Fails at once, in one line, where loading could only fail after the hub's retries."""
    bundled = bundled_path(name)
    if bundled:
        return str(bundled), {}
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder), {}
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or not _is_repo_id(name):
        raise LMQLError(f"no model folder at '{name}' (and it is not a Hugging Face model name)")
    cached = _in_hub_cache(name, revision)
    if cached:
        return name, ({} if hub_reachable() else {"local_files_only": True})
    if _hub_offline():
        raise LMQLError(f"'{name}' is not a local folder and not in the Hugging Face cache, and "
                        f"HF_HUB_OFFLINE is set: download it first (hf download {name}) or pass a folder")
    if not hub_reachable():
        raise LMQLError(f"'{name}' is not a local folder and not in the Hugging Face cache, and the "
                        f"hub ({_hub_endpoint()}) is unreachable: download it first "
                        f"(hf download {name}) or pass a folder")
    return name, {}


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _in_hub_cache(name: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub (or the proxy in between) opens within a few seconds;
    without this, a missing network shows only after the hub client's retries (~26 s)."""
    if _hub_offline():
        return False
    proxy = next((os.environ[v] for v in PROXY_VARIABLES if os.environ.get(v)), None)
    url = urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else _hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    opened: list[bool] = []

    def probe() -> None:  # in a thread: name resolution itself has no timeout
        with contextlib.suppress(OSError), socket.create_connection((url.hostname or "", port),
                                                                    HUB_PROBE_TIMEOUT_S):
            opened.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(opened)
