"""A thread's time by function, everything it calls included, from a window that
``stack_sampler.py`` wrote (its collapsed stacks):

    python benchmarks/stack_shares.py DIR/window-2.txt [--thread lmql-engine] [--top 40]
    python benchmarks/stack_shares.py DIR/window-2.txt --callers "to_device (pinned_ring" [--depth 3]

The first form prints each function's share of the thread's samples (a function counted once a
sample, however deep it recurs); ``--callers`` instead the chains of callers above the first
frame whose text contains the given string, by share.
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Iterator
from pathlib import Path


def stacks(path: Path, thread: str) -> Iterator[tuple[list[str], int]]:
    """Each collapsed stack of ``thread`` (its frames, outermost first) and its samples."""
    collapsed = False
    for line in path.read_text().splitlines():
        if line.startswith("## collapsed"):
            collapsed = True
        elif collapsed and line.startswith(thread + ";"):
            stack, count = line.rsplit(" ", 1)
            yield stack.split(";")[1:], int(count)


def inclusive(path: Path, thread: str) -> tuple[collections.Counter[str], int]:
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks(path, thread):
        total += count
        for function in {re.sub(r":\d+\)", ")", frame) for frame in frames}:
            shares[function] += count
    return shares, total


def callers(path: Path, thread: str, target: str, depth: int) -> tuple[collections.Counter[str], int]:
    chains: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks(path, thread):
        total += count
        at = next((i for i, frame in enumerate(frames) if target in frame), None)
        if at is not None:
            chains[" <- ".join(reversed(frames[max(0, at - depth) : at + 1]))] += count
    return chains, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("window", type=Path)
    parser.add_argument("--thread", default="lmql-engine")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--callers", metavar="TEXT")
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    if args.callers:
        counted, total = callers(args.window, args.thread, args.callers, args.depth)
    else:
        counted, total = inclusive(args.window, args.thread)
    print(f"{args.thread}: {total} samples")
    for name, count in counted.most_common(args.top):
        print(f"{100 * count / max(total, 1):6.1f}%  {name}")


if __name__ == "__main__":
    main()
