"""The workloads of issue 19, by name: what each sends, on which model, and the issue's target.

Every point is one lmtp_load run (fresh prompts each time unless --repeat-prompts); ``repeats``
is how often it runs on our server (the first run of a server is its "first after Ready" row),
and ``lmql`` whether LMQL 0.7.3's server runs it too (once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    label: str
    streams: int
    prompt_len: str = "16"  # N, or A-B drawn per stream
    new_tokens: str = "128"
    stagger_ms: float = 0.0
    score: int = 0  # > 0: SCORE requests of this many tokens, counted in requests/s
    repeats: int = 1
    lmql: bool = True
    target: str = ""

    def load_args(self) -> list[str]:
        args = ["--streams", str(self.streams), "--prompt-len", self.prompt_len,
                "--new-tokens", self.new_tokens, "--stagger-ms", str(self.stagger_ms)]
        return args + (["--score", str(self.score)] if self.score else [])

    def shrunk(self) -> Point:
        """The CPU smoke version: the same kind of requests, a few tokens each."""
        return dataclasses.replace(self, streams=min(self.streams, 3), score=min(self.score, 4),
                                   prompt_len=cap_lengths(self.prompt_len, 24, low_cap=12),
                                   new_tokens=cap_lengths(self.new_tokens, 4, low_cap=2))

    def at_most(self, new_tokens: int) -> Point:
        """The same point with at most ``new_tokens`` per stream."""
        return dataclasses.replace(self, new_tokens=cap_lengths(self.new_tokens, new_tokens))


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    points: tuple[Point, ...]


def cap_lengths(lengths: str, cap: int, low_cap: int | None = None) -> str:
    """``N`` or ``A-B`` with every length at most ``cap`` (and A at most ``low_cap``)."""
    low, _, high = lengths.partition("-")
    if not high:
        return str(min(int(low), cap))
    return f"{min(int(low), cap if low_cap is None else low_cap)}-{min(int(high), cap)}"


WORKLOADS = (
    Workload("short", "gpt2-medium", (
        Point("1 stream", 1, repeats=2, target=">= 1,000 tok/s (no --compile)"),
        Point("8 streams", 8),
        Point("32 streams", 32),
        Point("64 streams", 64, repeats=2, target=">= 30,000 tok/s on the first run"),
    )),
    Workload("long-prompts", "gpt2-medium", (
        Point("64 x 512-token prompts", 64, prompt_len="512", repeats=2,
              target="TTFT median <= 150 ms, >= 15,000 tok/s"),
    )),
    Workload("score", "gpt2-medium", (
        Point("SCORE 64 x (256 + 16)", 64, prompt_len="256", score=16, repeats=2, target=">= 1,500 req/s"),
    )),
    Workload("staggered", "gpt2-medium", (
        Point("16 streams 20 ms apart", 16, stagger_ms=20.0, repeats=2, target="TTFT median <= 15 ms"),
    )),
    Workload("llama", "llama-1b", (
        Point("1 stream", 1, repeats=2, target=">= 800 tok/s"),
        Point("64 streams", 64, repeats=2, target=">= 20,000 tok/s"),
        Point("64 x 512-token prompts", 64, prompt_len="512"),
    )),
    Workload("qwen3", "qwen3-0.6b", (
        Point("1 stream", 1, repeats=2),
        Point("64 streams", 64, repeats=2),
    )),
    Workload("offline", "qwen3-0.6b", (
        Point("256 requests, 100-1024 in and out, all at once", 256, prompt_len="100-1024",
              new_tokens="100-1024", lmql=False, target=">= 12,000 tok/s"),
    )),
)
FIRST_TARGET = "TTFT <= 2x warm"


def select(names: str) -> list[Workload]:
    """``all`` or comma-separated workload names, in the catalogue's order."""
    known = {w.name: w for w in WORKLOADS}
    wanted = list(known) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; known: {', '.join(known)}")
    return [w for w in WORKLOADS if w.name in wanted]
