"""Small pretrained checkpoints shipped with the package (each folder's TRAINED.md says how it was made)."""

from __future__ import annotations

from pathlib import Path

from recruit.errors import RecruitError

HERE = Path(__file__).resolve().parent
DEFAULT = "gpt-tiny"


def shipped() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.name for p in HERE.iterdir() if (p / "config.json").is_file())


def path(name: str = DEFAULT) -> Path:
    """Directory of shipped checkpoint ``name``."""
    p = HERE / name
    if not (p / "config.json").is_file():
        raise RecruitError(f"no shipped checkpoint {name!r}; shipped: {', '.join(shipped()) or 'none'}")
    return p
