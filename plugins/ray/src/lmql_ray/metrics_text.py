"""Prometheus text of several replicas as one exposition: each sample labelled with its replica."""

from __future__ import annotations

import re

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<rest>.*)$")


def label_samples(text: str, replica: str) -> tuple[list[str], list[str]]:
    """(``# HELP``/``# TYPE`` lines, samples with ``replica="..."`` added) of one exposition."""
    comments, samples = [], []
    escaped = replica.replace("\\", "\\\\").replace('"', '\\"')
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        match = SAMPLE.match(line)
        if match is None:
            continue
        labels = f'replica="{escaped}"' + (f",{match['labels']}" if match["labels"] else "")
        samples.append(f"{match['name']}{{{labels}}} {match['rest']}")
    return comments, samples


def merge_metrics(texts: dict[str, str]) -> str:
    """One exposition of every replica's (``texts``: replica name -> its exposition), each
    family's HELP and TYPE once, before its samples."""
    families: dict[str, list[str]] = {}  # family name -> lines: comments first
    order: list[str] = []
    for replica, text in sorted(texts.items()):
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                if family not in families:
                    families[family] = []
                    order.append(family)
                if line not in families[family]:
                    families[family].append(line)
            elif line.strip() and not line.startswith("#"):
                families.setdefault(family, [])
                if family not in order:
                    order.append(family)
                families[family].extend(label_samples(line, replica)[1])
    return "".join(line + "\n" for family in order for line in families[family])
