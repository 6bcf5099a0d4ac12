"""Benchmarks: each technique registers one, and ``recruit bench NAME --out DIR`` runs it.

A benchmark is a function ``run(opts) -> list[Record]`` plus, optionally, a report section that turns its
records into HTML. It collects its records in ``opts.recorder()`` as it measures them, so that ``recruit bench``
can keep them in ``NAME.partial.jsonl`` should the run not finish. Benchmarks time the dense baseline in the same
run and report ratios. One with a config dataclass picks its defaults (quick, CPU or GPU sizes) and passes them
through :func:`configure`, so that ``recruit bench NAME --set FIELD=VALUE`` can change any field; one with fixed
cases calls :func:`fixed_cases`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from recruit.config import with_overrides
from recruit.errors import RecruitError
from recruit.records import Record, Recorder

T = TypeVar("T")


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
        overrides: Fields of the benchmark's config to replace (``recruit bench NAME --set FIELD=VALUE``);
            strings are converted to each field's type. Applied by :func:`configure`.
        sink: Called with each record as soon as it is measured (``recruit bench`` appends it to
            ``NAME.partial.jsonl``); benchmarks collect their records in :meth:`recorder`.
    """

    model: str | None = None
    corpus: str = "debian"
    device: str = "auto"
    quick: bool = False
    max_bytes: int = 32768
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    sink: Callable[[Record], None] | None = None

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")

    def recorder(self) -> Recorder:
        """An empty :class:`~recruit.records.Recorder` that passes each record on to :attr:`sink`."""
        return Recorder(self.sink)


@dataclass
class Bench:
    """A registered benchmark."""

    name: str
    run: Callable[[BenchOptions], list[Record]]
    section: Callable[[list[Record]], str] | None = None  # records -> HTML for the report
    summary: str = ""
    in_report: bool = False  # run by ``recruit report`` on the shipped defaults
    takes_model: bool = False  # measures ``BenchOptions.model`` (``--model``); the others build their own models


def configure(opts: BenchOptions, cfg: T, bench: str) -> T:
    """The config ``cfg`` a benchmark picked, with ``opts.overrides`` applied (unknown fields are errors)."""
    return with_overrides(cfg, opts.overrides, f"{bench} config")


def fixed_cases(opts: BenchOptions, bench: str) -> None:
    """Refuse ``--set`` for a benchmark whose cases are fixed (it has no config dataclass)."""
    if opts.overrides:
        raise RecruitError(f"{bench} takes no --set (its cases are fixed in code); got {', '.join(opts.overrides)}")


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


def partial_file(out: str | Path, name: str) -> Path:
    """Where ``recruit bench NAME --out DIR`` appends each record while it runs: ``DIR/NAME.partial.jsonl``."""
    return Path(out) / f"{name}.partial.jsonl"
