"""Result records: every figure a user sees is one JSON line (bench, case, metric, value, unit, env).

A ratio is always technique ÷ dense baseline, except ``speedup`` = baseline time ÷ technique time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from recruit.errors import RecruitError
from recruit.io import atomic_write_text


@cache
def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@cache
def source_hash() -> str:
    """A hash of the package's Python sources (12 hex digits): which code ran, where git cannot say.

    A "-dirty" commit names a tree that differs from it somewhere, and a copy of the tree on another machine may
    carry an older ``.git``; two records with the same source hash were made by the same recruit code.
    """
    import hashlib

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@cache
def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU as Linux describes it: ``AMD EPYC (family 26, model 2, avx512)``, say.

    Model name, family and model numbers and the widest vector ISA, from ``/proc/cpuinfo``; elsewhere
    ``platform.processor()`` or the machine type. CPU figures depend on it: a VM's "x86_64" may be any of several
    generations of chip.
    """
    fallback = platform.processor() or platform.machine()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return fallback
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return fallback
    flags = fields.get("flags", "").split()
    isa = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    parts = [f"family {fields['cpu family']}" if "cpu family" in fields else None]
    parts += [f"model {fields['model']}" if "model" in fields else None, isa and isa.removesuffix("f")]
    details = ", ".join(p for p in parts if p)
    return fields["model name"] + (f" ({details})" if details else "")


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The environment a figure was measured in: device, versions, threads, commit, source hash, CPU model."""
    import recruit

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "device": device.type,
        "device_name": name,
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recruit": recruit.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "commit": _git_commit(),
        "source": source_hash(),
    }


@dataclass
class Record:
    """One measured figure.

    Attributes:
        bench: The technique or benchmark (``baseline``, ``fff``, ``kv``, ``bdh``...).
        case: The configuration measured, e.g. ``model=gpt-small,lang=de``.
        metric: Plain name: ``bpb``, ``ppl``, ``params``, ``latency_ms``, ``speedup``, ``bpb_ratio``...
        value: The number.
        unit: Unit of ``value`` (``bits/byte``, ``ms``, ``bytes``, ``x``, ``""`` for counts).
        env: Where it was measured (see :func:`environment`).
    """

    bench: str
    case: str
    metric: str
    value: float
    unit: str = ""
    env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("bench", "case", "metric"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Record.{name} must be a non-empty string")
        if not isinstance(self.unit, str):
            raise ValueError(f"Record.unit must be a string, got {self.unit!r}")
        if not isinstance(self.env, dict):
            raise ValueError(f"Record.env must be a mapping, got {type(self.env).__name__}")
        if self.value is None or type(self.value).__name__ in ("bool", "bool_"):  # float() would take a bool
            raise ValueError(f"Record.value must be a number, got {self.value!r}")
        try:
            self.value = float(self.value)  # numbers (Python, numpy, 0-d tensors) and "nan" / "inf"
        except OverflowError:
            raise ValueError("Record.value is too large for a float") from None

    @property
    def run(self) -> tuple[str, str]:
        """The run that made it: the commit and the source hash of its environment (``""`` where absent)."""
        return str(self.env.get("commit", "")), str(self.env.get("source", ""))

    @property
    def params(self) -> dict[str, str]:
        """The ``case`` string ``k=v,k=v`` as a dict (parts without ``=`` map to themselves)."""
        out = {}
        for part in self.case.split(","):
            k, _, v = part.partition("=")
            out[k] = v if _ else k
        return out

    def to_json(self) -> str:
        """The record as one JSON line (no trailing newline)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


class Recorder:
    """A benchmark's records in the order they are measured, each also handed to ``sink`` as it comes.

    ``recruit bench`` passes a sink that appends every record to a file at once, so that a run cut short (a time
    limit, a crash, Ctrl-C) keeps what it had measured. Without a sink this is a plain list.

    Attributes:
        records: Every record added so far.
    """

    def __init__(self, sink: Callable[[Record], None] | None = None) -> None:
        self.records: list[Record] = []
        self._sink = sink

    def add(self, record: Record) -> None:
        """Keep ``record`` and pass it to the sink."""
        self.records.append(record)
        if self._sink is not None:
            self._sink(record)

    def extend(self, records: Iterable[Record]) -> None:
        """:meth:`add` each of ``records`` in turn."""
        for r in records:
            self.add(r)


class PartialFile:
    """A sink for :class:`Recorder` that appends each record to ``path`` as one JSON line, flushed at once.

    The file is created at the first record, replacing an earlier run's (:attr:`earlier` says whether there was
    one), so a run that measures nothing leaves that one as it was. A line once written survives the process
    being killed, even by ``SIGKILL``. :meth:`finish` closes and deletes it, once the complete records are safely
    elsewhere.

    Attributes:
        count: Records written by this run.
        earlier: Whether an earlier run's file was at ``path`` when this one started.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.count = 0
        self.earlier = self.path.exists()
        self._file: Any = None

    def __call__(self, record: Record) -> None:
        """Append ``record`` to the file (created at the first call) and flush it."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (open until finish/close)
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file, keeping it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> None:
        """Close the file and delete it."""
        self.close()
        self.path.unlink(missing_ok=True)


def write_records(path: str | os.PathLike, records: list[Record]) -> Path:
    """Write ``records`` as JSON Lines to ``path`` atomically, replacing any earlier file."""
    path = Path(path)
    atomic_write_text(path, "".join(r.to_json() + "\n" for r in records))
    return path


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read a JSON Lines file of records; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecruitError(f"no result file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecruitError(f"{path} is not a result file: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise RecruitError(f"cannot read {path}: {e.strerror or e}") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise RecruitError(f"{path}:{i}: not a result record ({e})") from None
    return out
