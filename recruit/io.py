"""Atomic file writes: nothing half-written is ever left under the final name.

Every file the library writes (checkpoints, corpora, records, reports) goes through these helpers: the
content is written to a temporary file in the same directory, flushed and fsynced, then renamed over the
target, which POSIX guarantees to be atomic.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from recruit.errors import RecruitError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error delete it.

    Args:
        path: Final destination.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: Text encoding (ignored in binary mode).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _new_tmp(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def output_dir(path: str | os.PathLike, what: str = "output directory", create: bool = True) -> Path:
    """Make sure ``path`` is, or can become, a directory this process writes to; return it.

    Commands call it before any work, so that a bad ``--out`` is a one-line error at once rather than a
    traceback after minutes of work. ``what`` names the option in the message. With ``create`` the directory
    (and its parents) is made now; without, the nearest existing ancestor must be a writable directory.

    Raises:
        RecruitError: ``path`` is empty, is a file, cannot be created, or is not writable.
    """
    if not str(path):
        raise RecruitError(f"{what} is empty: give a directory")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise RecruitError(f"{what} {p} exists and is not a directory")
    missing = []  # the directories made here, deepest last
    base = p.absolute()
    while not base.exists():
        missing.append(base)
        base = base.parent
    if not base.is_dir():
        raise RecruitError(f"cannot create {what} {p}: {base} is not a directory")
    try:
        for d in reversed(missing):
            d.mkdir()
    except OSError as e:
        raise RecruitError(f"cannot create {what} {p}: {e.strerror or e}") from None
    finally:
        if not create:  # only tried: leave the tree as it was
            for d in missing:
                with contextlib.suppress(OSError):
                    d.rmdir()
    if not os.access(p, os.W_OK | os.X_OK) and not missing:
        raise RecruitError(f"{what} {p} is not writable")
    return p


def output_file(path: str | os.PathLike, what: str = "output file", create: bool = True) -> Path:
    """Make sure a file can be written at ``path``: not a directory, in a directory that is (or can be) writable."""
    if not str(path):
        raise RecruitError(f"{what} is empty: give a file name")
    p = Path(path).expanduser()
    if p.is_dir():
        raise RecruitError(f"{what} {p} is a directory")
    output_dir(p.parent, f"the directory of {what}", create)
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp`` ordinary file permissions (mkstemp makes it 0600) and rename it to ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_tmp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside ``path`` for writers that need a file name (``torch.save``, safetensors).

    The caller writes to it and then calls ``os.replace(tmp, path)``; see :func:`atomic_save_with`.
    """
    fd, tmp = _new_tmp(Path(path))
    os.close(fd)
    return Path(tmp)


def _new_tmp(path: Path) -> tuple[int, str]:
    """A new temporary file ``.NAME.XXXX.tmp`` beside ``path`` (its directory made, stale ones removed): (fd, path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def remove_stale_tmp(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of earlier writes of ``path`` that never finished (``kill -9`` mid-write).

    Writes here go to ``.NAME.XXXX.tmp`` beside ``NAME`` and are renamed when complete, so such a file left
    behind is a write that was cut short; a checkpoint's may be as large as the model. (One process writes a
    given file at a time.) Returns what was deleted.
    """
    path = Path(path)
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def atomic_save_with(path: str | os.PathLike, writer) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``; clean up on failure."""
    tmp = atomic_tmp_path(path)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
