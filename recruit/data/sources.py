"""Text sources: Debian packages (the Python documentation, man pages in six languages) and the user's files.

A package's files come from the system when it is installed there, else from ``apt-get download`` into the cache
(``<cache>/debs/``), unpacked with ``dpkg-deb -x`` into ``<cache>/debs/root/<package>/``. The document readers
take a :class:`PackageTree` (a root directory and optionally the list of files that belong to the package), so
tests can run them on a fake package tree without apt.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from recruit.data.clean import roff_to_text, rst_to_text
from recruit.errors import RecruitError

log = logging.getLogger(__name__)

MAN_LANGUAGES = {
    "manpages": "en",
    "manpages-de": "de",
    "manpages-fr": "fr",
    "manpages-pl": "pl",
    "manpages-ru": "ru",
    "manpages-es": "es",
}
"""Man-page packages and the language of their pages."""
PACKAGES: tuple[str, ...] = ("python3.11-doc", *MAN_LANGUAGES)
"""The default Debian packages of the corpus."""
_PYDOC = re.compile(r"python3\.\d+-doc")


@dataclass(frozen=True)
class Document:
    """One document of the corpus before tokenisation.

    Attributes:
        id: Unique, stable name, e.g. ``python-doc:library/os.rst:prose`` or ``manpages-de:man1/ls.1``.
        text: Clean UTF-8 text.
        lang: Language tag (``en``, ``de``, ..., ``xx``).
        kind: One of ``prose``, ``code``, ``manual``, ``text``.
        source: Where it came from: a Debian package name or ``text``.
    """

    id: str
    text: str
    lang: str
    kind: str
    source: str


@dataclass(frozen=True)
class PackageTree:
    """The files of an unpacked Debian package.

    Attributes:
        name: Package name.
        root: Directory the package was unpacked into (``/`` for an installed package).
        version: Package version.
        files: Paths relative to ``root`` that belong to the package, or ``None`` for "everything under root".
    """

    name: str
    root: Path
    version: str
    files: frozenset[str] | None = None

    def find(self, pattern: str) -> list[tuple[str, Path]]:
        """Regular files (not symlinks) whose path relative to ``root`` fully matches ``pattern``, sorted."""
        regex = re.compile(pattern)
        if self.files is not None:
            rels = [f for f in self.files if regex.fullmatch(f)]
        else:
            rels = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*")]
            rels = [r for r in rels if regex.fullmatch(r)]
        paths = [(r, self.root / r) for r in sorted(rels)]
        return [(r, p) for r, p in paths if p.is_file() and not p.is_symlink()]


def check_package_name(name: str) -> None:
    """Raise :class:`RecruitError` unless ``name`` is a package this module can read."""
    if name not in MAN_LANGUAGES and not _PYDOC.fullmatch(name):
        raise RecruitError(f"unknown text package {name!r}; allowed: {', '.join(PACKAGES)} or another python3.X-doc")


def _missing(name: str, why: str) -> RecruitError:
    return RecruitError(
        f"missing Debian package {name} ({why}): run 'sudo apt-get update && sudo apt-get install "
        f"{name}' (or pass --text DIR to use your own text)"
    )


def _run(cmd: Sequence[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(list(cmd), 1, "", str(e))


def _installed(name: str) -> PackageTree | None:
    """The package as installed on this system, if it is and its files are really there."""
    if not shutil.which("dpkg-query"):
        return None
    r = _run(["dpkg-query", "-W", "-f=${Status}\t${Version}", name], timeout=60)
    status, _, version = r.stdout.partition("\t")
    if r.returncode != 0 or not status.endswith(" installed"):
        return None
    listing = _run(["dpkg-query", "-L", name], timeout=60).stdout.splitlines()
    files = frozenset(f.lstrip("/") for f in listing if f.startswith("/usr/share/") and os.path.isfile(f))
    wanted = f"usr/share/doc/{name.removesuffix('-doc')}/html/_sources/" if _PYDOC.fullmatch(name) else "usr/share/man/"
    if not any(f.startswith(wanted) for f in files):  # e.g. docs excluded by dpkg's path-exclude
        return None
    return PackageTree(name, Path("/"), version.strip(), files)


def fetch_packages(names: Sequence[str], cache_dir: Path) -> list[PackageTree]:
    """Locate or download and unpack each package (installed files first, then the cache, then apt).

    Args:
        names: Debian package names.
        cache_dir: The recruit cache; downloads go to ``<cache_dir>/debs/``.

    Returns:
        One :class:`PackageTree` per name.

    Raises:
        RecruitError: A package can neither be found nor downloaded; the message gives the install command.
    """
    debs, trees, updated = Path(cache_dir) / "debs", [], False
    for name in names:
        check_package_name(name)
        if tree := _installed(name):
            log.info("using installed %s %s", name, tree.version)
            trees.append(tree)
            continue
        root = debs / "root" / name
        if (root / ".version").is_file():
            trees.append(PackageTree(name, root, (root / ".version").read_text().strip()))
            continue
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            raise _missing(name, "apt-get and dpkg-deb not found")
        (debs / "root").mkdir(parents=True, exist_ok=True)
        found = sorted(debs.glob(f"{name}_*.deb"))
        while not found:
            log.info("downloading %s with apt-get", name)
            r = _run(["apt-get", "download", name], cwd=debs)
            found = sorted(debs.glob(f"{name}_*.deb"))
            if found:
                break
            if updated or os.geteuid() != 0:
                raise _missing(name, f"apt-get download failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            log.info("apt-get download failed; running apt-get update once")
            _run(["apt-get", "update"])
            updated = True
        deb = found[-1]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], timeout=120).stdout.strip() or "unknown"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root.parent))
        r = _run(["dpkg-deb", "-x", str(deb), str(tmp)], timeout=300)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _missing(name, f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()[:200]}")
        (tmp / ".version").write_text(version + "\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        trees.append(PackageTree(name, root, version))
    return trees


def read_man_page(path: Path) -> str:
    """The roff source of a man page file (plain, ``.gz`` or ``.xz``), decoded as UTF-8 (else Latin-1)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    elif path.suffix == ".xz":
        data = lzma.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _sample(items: list[tuple[str, Path]], limit: int | None) -> list[tuple[str, Path]]:
    """All items, or a stable pseudo-random subset of ``limit`` of them (by the hash of their paths)."""
    if limit is None or limit >= len(items):
        return items
    return sorted(sorted(items, key=lambda it: hashlib.sha1(it[0].encode()).hexdigest())[:limit])


def _bar(items: list, desc: str, progress: bool) -> Iterator:
    return iter(tqdm(items, desc=desc, unit="file", disable=not (progress and sys.stderr.isatty()), leave=False))


def python_doc_documents(tree: PackageTree, max_docs: int | None = None, progress: bool = False) -> Iterator[Document]:
    """The Python documentation: per ``.rst`` file one ``prose`` and one ``code`` document (English).

    Args:
        tree: An unpacked ``python3.X-doc`` package.
        max_docs: Yield at most this many documents (from a stable subset of the files), for quick builds.
        progress: Show a progress bar.

    Yields:
        Documents with ids like ``python-doc:library/os.rst:prose``.
    """
    base, count = f"usr/share/doc/{tree.name.removesuffix('-doc')}/html/_sources/", 0
    for rel, path in _bar(_sample(tree.find(re.escape(base) + r".+\.rst\.txt"), max_docs), tree.name, progress):
        segments = rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
        name = rel[len(base) :].removesuffix(".txt")
        for kind in ("prose", "code"):
            text = "\n\n".join(t for k, t in segments if k == kind).strip()
            if text and (max_docs is None or count < max_docs):
                count += 1
                yield Document(f"python-doc:{name}:{kind}", text, "en", kind, tree.name)


def man_documents(
    tree: PackageTree, lang: str, max_docs: int | None = None, progress: bool = False
) -> Iterator[Document]:
    """Man pages of one language, one ``manual`` document per page (``.so`` aliases and symlinks skipped).

    Args:
        tree: An unpacked ``manpages`` or ``manpages-XX`` package.
        lang: The pages' language; English pages live in ``usr/share/man/manN/``, others in
            ``usr/share/man/<lang>/manN/``.
        max_docs: Read at most this many pages (a stable subset), for quick builds.
        progress: Show a progress bar.

    Yields:
        Documents with ids like ``manpages-de:man1/ls.1``.
    """
    base = "usr/share/man/" + ("" if lang == "en" else f"{lang}/")
    for rel, path in _bar(_sample(tree.find(re.escape(base) + r"man[^/]+/[^/]+"), max_docs), tree.name, progress):
        text, page = roff_to_text(read_man_page(path)), re.sub(r"\.(gz|xz)$", "", rel[len(base) :])
        if text:
            yield Document(f"{tree.name}:{page}", text, lang, "manual", tree.name)


def package_documents(tree: PackageTree, max_docs: int | None = None, progress: bool = False) -> Iterator[Document]:
    """The documents of any supported package (see :data:`PACKAGES`)."""
    check_package_name(tree.name)
    if tree.name in MAN_LANGUAGES:
        return man_documents(tree, MAN_LANGUAGES[tree.name], max_docs, progress)
    return python_doc_documents(tree, max_docs, progress)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecruitError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise RecruitError(f"{path} is a binary file (it contains NUL bytes); pass UTF-8 text files")
    try:
        text = data.decode("utf-8-sig").replace("\r\n", "\n").strip()
    except UnicodeDecodeError:
        raise RecruitError(f"{path} is not valid UTF-8 text (a binary file?); pass UTF-8 text files") from None
    if not text:
        raise RecruitError(f"{path} is empty; pass a file with some text")
    return text


def text_documents(path: str | os.PathLike, lang: str = "xx") -> list[Document]:
    """The user's text: a file, or every non-hidden file under a directory, each one document of kind ``text``.

    Args:
        path: A UTF-8 text file or a directory searched recursively.
        lang: Language tag of the text (two or three lowercase letters; unknown tags use the ``xx`` token).

    Returns:
        Documents with ids ``text:<path relative to the directory>`` (``text:<file name>`` for a file).

    Raises:
        RecruitError: The path is missing, the file is empty or binary, or a directory holds no usable text
            (binary and empty files in a directory are skipped with a warning).
    """
    if not re.fullmatch(r"[a-z]{2,3}", lang):
        raise RecruitError(f"language tag must be two or three lowercase letters (e.g. en, de, xx), got {lang!r}")
    root = Path(path).expanduser()
    if root.is_file():
        return [Document(f"text:{root.name}", _read_text(root), lang, "text", "text")]
    if not root.is_dir():
        raise RecruitError(f"no such file or directory: {root}")
    docs = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if not file.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        try:
            docs.append(Document(f"text:{rel.as_posix()}", _read_text(file), lang, "text", "text"))
        except RecruitError as e:
            log.warning("skipping %s", e)
    if not docs:
        raise RecruitError(f"no usable text under {root}: every file is empty, hidden or binary")
    return docs
