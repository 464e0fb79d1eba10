"""The serving process and Python's garbage collector.

A loaded model (and what ``torch.compile`` leaves behind: graphs, guards, generated code) lives
until the process exits, yet every full collection walks all of it: a pause in the middle of a
decode step that grows with the model's Python objects. ``freeze_loaded_objects`` moves what
exists after loading out of the collector's sight; ``GCPauses`` times every collection, so the
pauses show in ``/metrics``.
"""

from __future__ import annotations

import gc
import time
from typing import Any


def freeze_loaded_objects() -> int:
    """Collect once, then exempt every surviving object from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze() -> None:
    """Give the frozen objects back to the collector once serving has ended: objects still frozen
    when the interpreter exits are never freed, and extension modules report them as leaks
    (triton's nanobind printed ~30 lines of "leaked instance" after every Ctrl-C)."""
    gc.unfreeze()


class GCPauses:
    """Seconds spent in collections, per generation, since ``install``."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0

    def install(self) -> GCPauses:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)
        return self

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.counts[generation] += 1


PAUSES = GCPauses()
