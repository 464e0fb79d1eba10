"""How often a streaming completion sends an event when many streams share one event loop."""

from __future__ import annotations

MAX_PAUSE_S = 0.25  # the longest a stream waits between its events when many share the loop
MIN_PAUSE_S = 0.001  # shorter pauses are not worth a timer: the next step comes as fast


class StreamPacer:
    """Spaces the events of the streams on one event loop, when there are many, so that writing
    them stays a small part of the loop's work: an event costs the loop ~20 us of its own making
    and ~90 us in all with the write and the interpreter's lock (a 2-core CPU, 64 streams), for
    64 streams every engine step on a GPU. A stream that waits gets the tokens produced meanwhile
    in its next event (``_deltas``), so fewer, larger events; a client reconstructs the same text,
    log-probs and finish."""

    def __init__(self, events_per_s: float, max_pause_s: float = MAX_PAUSE_S) -> None:
        """``events_per_s``: for all the streams together (0: no pauses)."""
        self.event_cost_s = 1 / events_per_s if events_per_s > 0 else 0.0
        self.max_pause_s = max_pause_s
        self.streams = 0  # streaming completions now

    def pause(self) -> float:
        """The least seconds between two events of a stream (its last event does not wait)."""
        pause = min(self.max_pause_s, self.streams * self.event_cost_s)
        return pause if pause >= MIN_PAUSE_S else 0.0
