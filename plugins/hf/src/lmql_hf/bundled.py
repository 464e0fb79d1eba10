"""Models shipped inside this package, usable with no network."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"


def bundled_path(name: str) -> Path | None:
    """The folder of a bundled model (``lmql-tiny``), or None for any other name."""
    path = MODELS_DIR / name
    return path if "/" not in name and (path / "config.json").is_file() else None


def resolve(name: str) -> str:
    """A bundled model's folder, or the name unchanged (a hub name or a local folder)."""
    path = bundled_path(name)
    return str(path) if path else name
