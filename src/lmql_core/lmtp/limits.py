"""The server's limits and options, written once: each field's default, its command-line flag and
help. ``lmql serve-model`` builds its options from this table (``serving.command_line``),
``lmql.serve`` takes the same names as keywords, and the wire checks (``wire``), the server
(``lmtp.server``) and OpenAI's API read the values from a ``Limits``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_MODEL = "lmql-tiny"  # served when none is named
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8080


def _limit(default: Any, flag: str, help: str = "") -> Any:
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = _limit(
        16 * 1024 * 1024, "--max-frame-bytes",
        "Largest websocket frame accepted; a larger one closes that connection.")
    max_streams_per_connection: int = _limit(
        1024, "--max-streams", "Streams one connection may have running or queued; beyond, a request "
        "gets an error. Connections share the batch fairly, whatever their queues.")
    max_tokens: int = _limit(65536, "--max-new-tokens", "Cap on a request's max_tokens.")
    max_top_logprobs: int = _limit(100, "--max-top-logprobs")
    max_logit_bias_entries: int = _limit(
        200_000, "--max-logit-bias", "Most logit_bias entries in one request.")
    max_connections: int = _limit(
        1024, "--max-connections",
        "Open TCP connections; one more is answered 503 and closed (keep `ulimit -n` above).")
    max_outgoing_bytes: int = _limit(
        32 * 1024 * 1024, "--max-outgoing-bytes", "Unsent frames one connection may hold (a client "
        "that does not read): beyond, its streams end with an error; beyond twice that, the "
        "connection is closed.")
    handshake_timeout_s: float = _limit(
        10.0, "--handshake-timeout", "Seconds a new connection has to complete its HTTP/websocket handshake.")
    shutdown_grace_s: float = _limit(
        10.0, "--shutdown-grace", "Seconds SIGTERM waits for clients to receive their streams' ends; "
        "then it closes every connection and exits.")
    # 500: at 64 streams an event every 128 ms a stream; 2000 (every 32 ms) cost the GPU-shaped load
    # (64 x 128 tokens, 1.5 ms steps) a third of its throughput (benchmarks/RESULTS.md, issue 29)
    openai_events_per_s: float = _limit(
        500.0, "--openai-events-per-s", "OpenAI's streams: server-sent events a second for all "
        "streams together; with many streams, each sends the tokens produced meanwhile in one event "
        "(0: one event per step).")

    @property
    def default_max_tokens(self) -> int:
        return self.max_tokens  # LMQL clients always send max_tokens; others run to EOS

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(limit.name for limit in fields(cls))

    @classmethod
    def taken_from(cls, options: dict[str, Any], base: Limits | None = None) -> Limits:
        """``base`` (the defaults where None) with the limits named in ``options``, which loses them."""
        given = {name: options.pop(name) for name in cls.names() if name in options}
        values = {limit.name: getattr(base, limit.name) for limit in fields(cls)} if base else {}
        return cls(**{**values, **given})
