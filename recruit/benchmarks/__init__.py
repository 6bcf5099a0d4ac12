"""Benchmarks: each technique registers one, and ``recruit bench NAME --out DIR`` runs it.

A benchmark is a function ``run(opts) -> list[Record]`` plus, optionally, a report section that turns its
records into HTML. Benchmarks time the dense baseline in the same run and report ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recruit.errors import RecruitError
from recruit.records import Record


@dataclass
class BenchOptions:
    """What every benchmark accepts.

    Attributes:
        model: Checkpoint directory of the model to measure; ``None`` uses the shipped default.
        corpus: Corpus name (under the cache dir) or directory.
        device: ``auto``, ``cpu`` or ``cuda``.
        quick: Smaller sizes and fewer repeats (tests, smoke runs).
        max_bytes: Bytes of held-out text scored per language.
        progress: Show progress bars.
    """

    model: str | None = None
    corpus: str = "debian"
    device: str = "auto"
    quick: bool = False
    max_bytes: int = 32768
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


@dataclass
class Bench:
    """A registered benchmark."""

    name: str
    run: Callable[[BenchOptions], list[Record]]
    section: Callable[[list[Record]], str] | None = None  # records -> HTML for the report
    summary: str = ""
    in_report: bool = False  # run by ``recruit report`` on the shipped defaults


BENCHES: dict[str, Bench] = {}


def register(bench: Bench) -> Bench:
    """Add ``bench`` to :data:`BENCHES`."""
    BENCHES[bench.name] = bench
    return bench


def get(name: str) -> Bench:
    """The benchmark called ``name``; an unknown name lists the known ones."""
    _load_all()
    if name not in BENCHES:
        raise RecruitError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHES))}")
    return BENCHES[name]


def all_benches() -> dict[str, Bench]:
    """Every registered benchmark."""
    _load_all()
    return BENCHES


def _load_all() -> None:
    from recruit.benchmarks import (  # noqa: F401  (they register themselves)
        baseline,
        bdh,
        bdh_compare,
        bdh_memory,
        bdh_sparsity,
        bdh_speed,
        fff_distil,
        fff_mlm,
        fff_model,
        fff_quality,
        fff_speed,
    )


def out_file(out: str | Path, name: str) -> Path:
    """Where ``recruit bench NAME --out DIR`` writes its records: ``DIR/NAME.jsonl``."""
    return Path(out) / f"{name}.jsonl"
