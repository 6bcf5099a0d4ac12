"""The multilingual text corpus: build it once into the cache, then memory-map its token streams.

A corpus directory holds, per split (train/val/test), ``<split>.bin`` (uint16 token ids: every document as
``ByteTokenizer().document(text, lang, kind)``, documents in sorted id order), ``<split>.docs.jsonl`` (one line
per document: id, offset, length in ids, lang, kind, source, n_bytes) and ``manifest.json`` (sources, versions
and sizes). Documents are assigned to splits by a hash of their id, so a rebuild gives identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recruit.data.sources import PACKAGES, Document, PackageTree, fetch_packages, package_documents, text_documents
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError
from recruit.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
"""The corpus splits, in order."""
TOKENIZER = "byte-288"
_FORMAT = 1


def default_cache_dir() -> Path:
    """``$RECRUIT_CACHE`` if set, else ``$XDG_CACHE_HOME/recruit``, else ``~/.cache/recruit``."""
    if os.environ.get("RECRUIT_CACHE"):
        return Path(os.environ["RECRUIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "recruit"


def _hash(doc_id: str) -> float:
    return int(hashlib.sha1(doc_id.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def split_of(doc_id: str) -> str:
    """The split a document id hashes to: 90% train, 5% val, 5% test."""
    h = _hash(doc_id)
    return "train" if h < 0.90 else "val" if h < 0.95 else "test"


def assign_splits(docs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Assign ``(id, lang)`` documents to splits by hash; a language with >= 3 documents gets one of each split.

    When a language lacks a split, the document with the highest hash from its largest split moves there, so the
    result depends only on the set of ids.
    """
    docs = list(docs)
    split = {doc_id: split_of(doc_id) for doc_id, _ in docs}
    by_lang: dict[str, list[str]] = defaultdict(list)
    for doc_id, lang in docs:
        by_lang[lang].append(doc_id)
    for ids in by_lang.values():
        for need in ("val", "test", "train") if len(ids) >= 3 else ():
            counts = Counter(split[i] for i in ids)
            if counts[need] == 0:
                donor = max((s for s in SPLITS if counts[s] > 1), key=lambda s: (counts[s], s))
                split[max((i for i in ids if split[i] == donor), key=_hash)] = need
    return split


@dataclass(frozen=True)
class DocInfo:
    """Where one document lies in a split's token stream.

    Attributes:
        id: Document id.
        offset: Index of its first id (the language tag) in ``<split>.bin``.
        length: Number of ids: 2 tags + ``n_bytes`` + 1 end-of-sequence.
        lang: Language tag.
        kind: Document kind.
        source: Package name or ``text``.
        n_bytes: UTF-8 bytes of the text.
    """

    id: str
    offset: int
    length: int
    lang: str
    kind: str
    source: str
    n_bytes: int


def prepare_corpus(
    name: str = "debian",
    cache_dir: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    lang: str = "xx",
    packages: Sequence[str] | None = None,
    max_docs_per_source: int | None = None,
    progress: bool = True,
    force: bool = False,
    debian_root: str | os.PathLike | None = None,
) -> Path:
    """Build the corpus ``<cache>/corpus/<name>/`` (or return it if it is already complete and built the same way).

    Args:
        name: Corpus name (a directory name).
        cache_dir: The recruit cache; default :func:`default_cache_dir`.
        text: A UTF-8 file or directory of the user's own text (documents of kind ``text``).
        lang: Language tag of ``text``.
        packages: Debian packages to read; default all of :data:`~recruit.data.sources.PACKAGES` when ``text``
            is not given, none when it is.
        max_docs_per_source: At most this many documents per package (a stable subset), for quick builds.
        progress: Show progress bars (only on a terminal).
        force: Rebuild even if a complete corpus exists.
        debian_root: Read package ``P`` from ``<debian_root>/P/`` (an unpacked tree) instead of the system or apt.

    Returns:
        The corpus directory.

    Raises:
        RecruitError: Bad input text, a package that cannot be found or downloaded, or no documents at all.
    """
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise RecruitError(f"corpus name must be letters, digits, '.', '-' or '_', got {name!r}")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = cache / "corpus" / name
    packages = list(PACKAGES if packages is None and text is None else packages or [])
    text_path = Path(text).expanduser().resolve() if text is not None else None
    root = Path(debian_root).expanduser().resolve() if debian_root else None
    params = {
        "packages": packages,
        "text": str(text_path) if text_path else None,
        "lang": lang if text else None,
        "max_docs_per_source": max_docs_per_source,
        "debian_root": str(root) if root else None,
    }
    if out.exists() and not force:
        try:
            if Corpus.load(out).manifest.get("params") == params:
                return out
            log.info("rebuilding %s: it was built with other parameters", out)
        except RecruitError as e:
            log.warning("rebuilding %s: %s", out, e)
    start = time.perf_counter()
    docs = text_documents(text_path, lang) if text_path else []
    trees = [PackageTree(p, root / p, "local") for p in packages] if root else fetch_packages(packages, cache)
    for tree in trees:
        found = list(package_documents(tree, max_docs_per_source, progress))
        size = format_bytes(sum(len(d.text.encode("utf-8")) for d in found))
        log.info("%s %s: %d documents, %s", tree.name, tree.version, len(found), size)
        docs += found
    if not docs:
        raise RecruitError(f"no documents for corpus {name!r}: give packages or --text PATH")
    manifest = {
        "format": _FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": TOKENIZER,
        "dtype": "uint16",
        "params": params,
        "packages": {t.name: t.version for t in trees},
    }
    _write(out, sorted(docs, key=lambda d: d.id), manifest, progress)
    log.info("built corpus %s in %.1f s", out, time.perf_counter() - start)
    written = Corpus.load(out)
    empty = [s for s in SPLITS if not written.docs(s)]
    if empty:  # splits take whole documents: a language of one or two documents cannot fill all three
        log.warning("corpus %s has no %s text: the splits take whole documents (give more documents, e.g. "
                    "--text a directory of several files); training needs val text and evaluation test text",
                    name, " or ".join(empty))  # fmt: skip
    return out


def _write(out: Path, docs: list[Document], manifest: dict[str, Any], progress: bool) -> None:
    """Write the corpus files into a temporary directory beside ``out``, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the corpus is ordinary data
    tok, split_of_doc = ByteTokenizer(), assign_splits((d.id, d.lang) for d in docs)
    try:
        manifest["splits"] = {}
        for split in SPLITS:
            chosen = [d for d in docs if split_of_doc[d.id] == split]
            infos, parts, offset = [], [], 0
            for d in tqdm(chosen, desc=split, unit="doc", leave=False, disable=not (progress and sys.stderr.isatty())):
                body = np.frombuffer(d.text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
                parts += [
                    np.array([tok.lang_id(d.lang), tok.kind_id(d.kind)], np.uint16),
                    body,
                    np.array([tok.eos_id], np.uint16),
                ]
                infos.append(DocInfo(d.id, offset, len(body) + 3, d.lang, d.kind, d.source, len(body)))
                offset += len(body) + 3
            with atomic_open(tmp / f"{split}.bin", "wb") as f:
                f.write(np.concatenate(parts).tobytes() if parts else b"")
            with atomic_open(tmp / f"{split}.docs.jsonl") as f:
                f.writelines(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in infos)
            manifest["splits"][split] = _stats(infos)
        manifest["totals"] = {k: sum(s[k] for s in manifest["splits"].values()) for k in ("docs", "tokens", "bytes")}
        atomic_write_json(tmp / "manifest.json", manifest)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:  # another process has put a corpus there meanwhile: keep that one
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stats(infos: Sequence[DocInfo]) -> dict[str, Any]:
    langs: dict[str, dict[str, dict[str, int]]] = {}
    for i in infos:
        cell = langs.setdefault(i.lang, {}).setdefault(i.kind, {"docs": 0, "bytes": 0})
        cell["docs"] += 1
        cell["bytes"] += i.n_bytes
    return {
        "docs": len(infos),
        "tokens": sum(i.length for i in infos),
        "bytes": sum(i.n_bytes for i in infos),
        "langs": langs,
    }


def format_bytes(n: float) -> str:
    """A byte count for humans: ``912 B``, ``14.2 kB``, ``3.1 MB``, ``1.2 GB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def format_sizes(manifest: dict[str, Any]) -> str:
    """A table of documents and bytes per language and kind (rows) and split (columns) from a manifest."""
    rows = sorted({(lang, kind) for s in manifest["splits"].values() for lang, ks in s["langs"].items() for kind in ks})
    head = ["lang", "kind", *SPLITS, "total"]

    def cell(docs: int, size: int) -> str:
        return f"{docs} docs {format_bytes(size)}"

    table = []
    for lang, kind in [*rows, ("all", "")]:
        cells = []
        for split in SPLITS:
            s = manifest["splits"][split]
            got = s["langs"].get(lang, {}).get(kind, {"docs": 0, "bytes": 0}) if lang != "all" else s
            cells.append((got["docs"], got["bytes"]))
        table.append([lang, kind, *(cell(*c) for c in cells), cell(sum(c[0] for c in cells), sum(c[1] for c in cells))])
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *table])


class Corpus:
    """A prepared corpus on disk (see :func:`prepare_corpus`), validated on load: ``Corpus.load("debian")``."""

    def __init__(self, path: Path, manifest: dict[str, Any], docs: dict[str, list[DocInfo]]) -> None:
        self.path, self.manifest, self._docs = path, manifest, docs  # use Corpus.load, which validates

    @classmethod
    def load(cls, path_or_name: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Corpus:
        """Open a corpus by directory or by name (``<cache>/corpus/<name>``).

        Raises:
            RecruitError: There is no corpus there, or it is corrupt or truncated.
        """
        path, name = Path(path_or_name).expanduser(), str(path_or_name)
        if not (isinstance(path_or_name, os.PathLike) or os.sep in name or (path / "manifest.json").is_file()):
            path = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "corpus" / name
        if not (path / "manifest.json").is_file():
            raise RecruitError(f"no corpus at {path}: run 'recruit data prepare' first")
        bad = f"corrupt corpus at {path}: delete it and run 'recruit data prepare'"
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            docs = {
                s: [DocInfo(**json.loads(x)) for x in (path / f"{s}.docs.jsonl").read_text("utf-8").splitlines()]
                for s in SPLITS
            }
            sizes = {s: (path / f"{s}.bin").stat().st_size for s in SPLITS}
        except (OSError, ValueError, TypeError) as e:
            raise RecruitError(f"{bad} ({type(e).__name__}: {e})") from None
        if not isinstance(manifest, dict) or manifest.get("tokenizer") != TOKENIZER:
            raise RecruitError(f"{bad} (manifest.json is not a {TOKENIZER} corpus manifest)")
        try:  # the per-split sizes that summaries read
            format_sizes(manifest)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise RecruitError(f"{bad} (manifest.json lacks its split sizes: {type(e).__name__}: {e})") from None
        for split, infos in docs.items():
            offsets = [0, *np.cumsum([i.length for i in infos]).tolist()]
            if any(i.offset != o for i, o in zip(infos, offsets, strict=False)) or sizes[split] != 2 * offsets[-1]:
                raise RecruitError(f"{bad} ({split}.bin has {sizes[split] // 2} ids, its index says {offsets[-1]})")
        return cls(path, manifest, docs)

    @property
    def fingerprint(self) -> str:
        """A short hash of the manifest: the same for one build of a corpus, another for any rebuild or other text."""
        return hashlib.sha1(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:12]

    def _check(self, split: str) -> None:
        if split not in SPLITS:
            raise RecruitError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids, memory-mapped read-only (uint16)."""
        self._check(split)
        if not self._docs[split]:
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(self.path / f"{split}.bin", dtype=np.uint16, mode="r")

    def docs(self, split: str) -> list[DocInfo]:
        """The split's documents in stream order."""
        self._check(split)
        return list(self._docs[split])

    def text(self, split: str, doc: DocInfo) -> str:
        """The text of one document of ``split`` (decoded from its token ids)."""
        return ByteTokenizer().decode(self.tokens(split)[doc.offset + 2 : doc.offset + doc.length - 1])

    def languages(self, split: str) -> list[str]:
        """Sorted language tags present in ``split``."""
        return sorted({d.lang for d in self.docs(split)})

    def summary(self) -> str:
        """A printable description: sources with versions, then sizes per split, language and kind."""
        m = self.manifest
        packages = ", ".join(f"{k} {v}" for k, v in sorted(m.get("packages", {}).items())) or "none"
        text = m.get("params", {}).get("text")
        return (
            f"corpus {m.get('name')} at {self.path} (tokenizer {m['tokenizer']}, built {m.get('created')})\n"
            f"packages: {packages}" + (f"\ntext: {text}" if text else "") + "\n" + format_sizes(m)
        )
