"""`lmql serve-cluster --min-replicas 1 --max-replicas 2`: Ray Serve adds a replica while the
ongoing streams exceed the target per replica, the added replica takes streams, and it is
removed once they have ended. Delays and look-back shortened from Ray's defaults (30 s, 600 s,
30 s) so that both steps happen within a minute or two."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import wait_until

pytest.importorskip("ray.serve")
pytest.importorskip("lmql_hf")

from plugins.ray.tests.cluster import NO_EOS, Cluster, prompt, served, streams  # noqa: E402

SCALE_TIMEOUT_S = 180
BUSY_STREAMS = 8  # 4x the target of 2 per replica: the load asks for more than the maximum


def keep_busy(endpoint: str, stop: threading.Event, failures: list[Any]) -> None:
    """Rounds of concurrent streams until ``stop``; any stream ending in an error is kept."""
    round_ = 0
    while not stop.is_set():
        requests = {sid: ("GENERATE", {"prompt": prompt(1000 * round_ + sid), "max_tokens": 32,
                                       "temperature": 0, **NO_EOS}) for sid in range(BUSY_STREAMS)}
        entries = streams(endpoint, requests)
        failures += [stream[-1] for stream in entries.values() if "error" in stream[-1]]
        round_ += 1


def test_replicas_follow_the_ongoing_streams_between_min_and_max() -> None:
    cluster = Cluster("lmql-tiny", "--min-replicas", "1", "--max-replicas", "2", "--target-ongoing", "2",
                      "--upscale-delay", "0", "--downscale-delay", "2", "--look-back", "12", replicas=1)
    try:
        [first] = cluster.health()
        stop, failures = threading.Event(), []
        load = threading.Thread(target=keep_busy, args=(cluster.endpoint, stop, failures))
        load.start()
        try:
            [added] = set(cluster.wait_healthy(SCALE_TIMEOUT_S, replicas=2)) - {first}
            wait_until(lambda: served(cluster.health()).get(added, 0) > 0, timeout=60)
        finally:
            stop.set()
            load.join()
        assert failures == []
        assert len(cluster.wait_healthy(SCALE_TIMEOUT_S, replicas=1)) == 1  # idle: back to the minimum
    finally:
        assert cluster.stop() == 0, cluster.output()
