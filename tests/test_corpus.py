"""Corpus tests: markup cleaning, the Debian code path on a fake package tree, user text, splits, errors.

Nothing here touches the network or apt: package fetching is exercised with a fake ``subprocess`` runner.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from recruit.data import sources
from recruit.data.clean import roff_to_text, rst_to_text
from recruit.data.corpus import (
    SPLITS,
    Corpus,
    assign_splits,
    default_cache_dir,
    format_bytes,
    prepare_corpus,
    split_of,
)
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError

RST = """\
:mod:`os` --- Miscellaneous interfaces
======================================

.. module:: os
   :synopsis: Secret synopsis.

.. _os-label:

This uses :func:`open`, :ref:`the guide <guide-label>`, ``*literal*``, *em*, **strong**,
:class:`~os.PathLike` and `Python <https://www.python.org>`_ [#]_.

.. note::

   Be careful with :exc:`OSError`.

.. versionadded:: 3.7
   See :pep:`540`.

Example::

    x = 1
    print(x)

.. code-block:: python
   :linenos:

   import os

>>> 1 + 1
2

.. index:: single: hidden index entry

.. This comment is dropped
   on both lines.

* item one with :meth:`Foo.bar`
  continued here
* item two

+------+------+
| head | cols |
+======+======+
| ``x``| y    |
+------+------+

=====  =====
col1   col2
=====  =====
1      2
=====  =====

Section two
-----------

.. function:: listdir(path='.')

   Return a *list*.
"""

ROFF = r""".\" A comment that must vanish
.TH LS 1 "2022" "GNU coreutils" "User Commands"
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fIOPTION\fR]... [\fIFILE\fR]...
.SH DESCRIPTION
.PP
List information \(em by default the current directory.
Caf\[u00E9], na\(:ive, \*(lqquoted\*(rq and \(aqsingle\(aq.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries
.IP \(bu 4
bullet text
.nf
line one
    line two
.fi
.TS
tab(;);
l l.
A;B
_
1;T{
long cell
T}
.TE
.UR https://example.org
the site
.UE .
.unknownrequest foo bar
\s+1big\s0 and\ spaced, a \e backslash\c
, joined.
"""

MDOC = """.Dd March 1, 2020
.Dt FOO 1
.Os
.Sh NAME
.Nm foo
.Nd do things
.Sh SYNOPSIS
.Nm
.Op Fl a Ar file
.Sh SEE ALSO
.Xr bar 1
"""


def test_rst_to_text_strips_markup_and_finds_code() -> None:
    segments = rst_to_text(RST)
    prose = "\n\n".join(t for k, t in segments if k == "prose")
    code = "\n\n".join(t for k, t in segments if k == "code")
    assert {k for k, _ in segments} == {"prose", "code"}
    for kept in [
        "os — Miscellaneous interfaces",
        "This uses open(), the guide, *literal*, em, strong, PathLike and Python.",
        "Note: Be careful with OSError.",
        "New in version 3.7: See PEP 540.",
        "Example:",
        "* item one with Foo.bar() continued here",
        "* item two",
        "head | cols",
        "x | y",
        "col1 | col2",
        "1 | 2",
        "Section two",
        "listdir(path='.')",
        "Return a list.",
    ]:
        assert kept in prose, kept
    for gone in ["`", ":func:", ".. ", "===", "---", "synopsis", "hidden index", "comment", "**", "[#]", "::"]:
        assert gone not in prose, gone
    assert "x = 1\nprint(x)" in code and "import os" in code and ">>> 1 + 1\n2" in code
    assert ":linenos:" not in code and "\n\n\n" not in code + prose


def test_roff_to_text_man_macros_escapes_and_tables() -> None:
    text = roff_to_text(ROFF)
    for kept in [
        "NAME\nls - list directory contents",
        "SYNOPSIS\nls [OPTION]... [FILE]...",
        "List information — by default the current directory. Café, naïve, “quoted” and 'single'.",
        "-a, --all\ndo not ignore entries",
        "• bullet text",
        "line one\n    line two",
        "A | B",
        "1 | long cell",
        "the site <https://example.org>.",
        "big and spaced, a \\ backslash, joined.",
    ]:
        assert kept in text, kept
    for gone in ["\\f", "\\(", "\\-", ".TH", "LS 1", "comment", "unknownrequest", "foo bar", ".TS", "tab(", "T{"]:
        assert gone not in text, gone
    assert not re.search(r"(?m)^\.", text)


def test_roff_to_text_mdoc_and_aliases() -> None:
    text = roff_to_text(MDOC)
    assert "NAME\nfoo — do things" in text and "foo [-a file]" in text and "bar(1)" in text
    assert "Dt" not in text and "FOO 1" not in text
    assert roff_to_text('.\\" alias\n.so man1/ls.1\n') == ""


def _write_pages(root: Path) -> None:
    """A fake unpacked tree of three packages under ``root/<package>/``."""
    man = root / "manpages-de/usr/share/man/de/man1"
    man.mkdir(parents=True)
    (man / "ls.1.gz").write_bytes(gzip.compress(ROFF.replace("list directory", "Verzeichnis listen").encode()))
    (man / "dir.1.gz").write_bytes(gzip.compress(b".so man1/ls.1\n"))
    (man / "vdir.1.gz").symlink_to("ls.1.gz")
    en = root / "manpages/usr/share/man/man7"
    en.mkdir(parents=True)
    (en / "foo.7.gz").write_bytes(gzip.compress(MDOC.encode()))
    docs = root / "python3.11-doc/usr/share/doc/python3.11/html/_sources"
    (docs / "library").mkdir(parents=True)
    (docs / "library/os.rst.txt").write_text(RST)
    (docs / "intro.rst.txt").write_text("Intro\n=====\n\nJust prose.\n")


def test_debian_code_path_on_fake_tree(tmp_path: Path) -> None:
    _write_pages(tmp_path / "debs")
    out = prepare_corpus(
        "fake",
        cache_dir=tmp_path / "cache",
        packages=["python3.11-doc", "manpages", "manpages-de"],
        debian_root=tmp_path / "debs",
        progress=False,
    )
    corpus = Corpus.load("fake", cache_dir=tmp_path / "cache")
    assert out == tmp_path / "cache/corpus/fake" and corpus.path == out
    docs = {d.id: (split, d) for split in SPLITS for d in corpus.docs(split)}
    assert sorted(docs) == [
        "manpages-de:man1/ls.1",
        "manpages:man7/foo.7",
        "python-doc:intro.rst:prose",
        "python-doc:library/os.rst:code",
        "python-doc:library/os.rst:prose",
    ]
    assert {(d.lang, d.kind, d.source) for _, d in docs.values()} == {
        ("de", "manual", "manpages-de"),
        ("en", "manual", "manpages"),
        ("en", "prose", "python3.11-doc"),
        ("en", "code", "python3.11-doc"),
    }
    split, info = docs["manpages-de:man1/ls.1"]
    assert corpus.text(split, info).startswith("NAME\nls - Verzeichnis listen")
    assert corpus.manifest["packages"] == {"python3.11-doc": "local", "manpages": "local", "manpages-de": "local"}
    assert "de" in corpus.summary() and "manual" in corpus.summary()


def _fake_runner(calls: list[list[str]]):
    def run(cmd, cwd=None, timeout=300):
        calls.append(list(cmd))
        rc, stdout = 0, ""
        if cmd[:2] == ["apt-get", "download"]:
            if ["apt-get", "update"] not in calls:
                return sources.subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package")
            (Path(cwd) / f"{cmd[2]}_4.18-1_all.deb").write_bytes(b"fake")
        elif cmd[:2] == ["dpkg-deb", "-f"]:
            stdout = "4.18-1\n"
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            _write_pages(Path(cmd[3]) / "unpacked")
            os.replace(Path(cmd[3]) / "unpacked/manpages-de/usr", Path(cmd[3]) / "usr")
        elif cmd[0] == "dpkg-query":
            rc = 1
        return sources.subprocess.CompletedProcess(cmd, rc, stdout, "")

    return run


def test_fetch_packages_downloads_updates_once_and_caches(tmp_path: Path, monkeypatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(sources, "_run", _fake_runner(calls))
    monkeypatch.setattr(sources.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(sources.os, "geteuid", lambda: 0)
    [tree] = sources.fetch_packages(["manpages-de"], tmp_path)
    assert tree.version == "4.18-1" and tree.root == tmp_path / "debs/root/manpages-de"
    assert [c[:2] for c in calls].count(["apt-get", "update"]) == 1
    assert [d.id for d in sources.package_documents(tree)] == ["manpages-de:man1/ls.1"]
    calls.clear()
    assert sources.fetch_packages(["manpages-de"], tmp_path)[0].version == "4.18-1"
    assert not [c for c in calls if c[0] != "dpkg-query"]  # the unpacked tree is reused


def test_fetch_packages_errors_give_the_install_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(RecruitError, match=r"sudo apt-get update && sudo apt-get install manpages-fr'"):
        sources.fetch_packages(["manpages-fr"], tmp_path)
    monkeypatch.setattr(sources, "_run", _fake_runner([]))
    monkeypatch.setattr(sources.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(sources.os, "geteuid", lambda: 1000)  # not root: no apt-get update
    with pytest.raises(RecruitError, match="missing Debian package manpages-fr .*Unable to locate"):
        sources.fetch_packages(["manpages-fr"], tmp_path)
    with pytest.raises(RecruitError, match="unknown text package"):
        sources.fetch_packages(["libc6"], tmp_path)


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "text"
    for i in range(14):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:02d}.{'md' if i % 3 else 'txt'}").write_text(f"Dokument {i}: zażółć gęślą jaźń {'x' * i}\n")
    (root / "image.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    (root / ".hidden").write_text("not me")
    return root


def test_prepare_corpus_from_text_is_deterministic_and_exact(text_dir: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        p1 = prepare_corpus("mine", cache_dir=tmp_path / "c1", text=text_dir, lang="pl", progress=False)
    assert "image.bin" in caplog.text
    p2 = prepare_corpus("mine", cache_dir=tmp_path / "c2", text=text_dir, lang="pl", progress=False)
    for name in [f"{s}.{ext}" for s in SPLITS for ext in ("bin", "docs.jsonl")]:
        assert (p1 / name).read_bytes() == (p2 / name).read_bytes(), name
    corpus, tok = Corpus.load(p1), ByteTokenizer()
    ids = [d.id for s in SPLITS for d in corpus.docs(s)]
    expected = sorted(f"text:{p.relative_to(text_dir).as_posix()}" for p in text_dir.rglob("doc*"))
    assert sorted(ids) == expected and len(set(ids)) == len(ids) == 14
    for split in SPLITS:
        tokens, docs = corpus.tokens(split), corpus.docs(split)
        assert [d.id for d in docs] == sorted(d.id for d in docs)
        stream = [i for d in docs for i in tok.document((text_dir / d.id[5:]).read_text().strip(), "pl", "text")]
        assert tokens.dtype == np.uint16 and tokens.tolist() == stream
        assert corpus.manifest["splits"][split]["tokens"] == len(tokens)
        assert corpus.manifest["splits"][split]["docs"] == len(docs)
        assert corpus.languages(split) == ["pl"]  # 14 docs of one language: every split gets some
    sizes = sum(len((text_dir / i[5:]).read_text().strip().encode()) for i in ids)
    assert corpus.manifest["totals"]["bytes"] == sizes and corpus.manifest["totals"]["docs"] == 14
    assert corpus.manifest["params"]["lang"] == "pl" and "pl" in corpus.summary()


def test_prepare_corpus_reuses_complete_corpus_unless_forced(text_dir: Path, tmp_path: Path) -> None:
    path = prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False)
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp
    prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False, force=True)
    assert json.loads((path / "manifest.json").read_text())["totals"]["docs"] == 14
    prepare_corpus("mine", cache_dir=tmp_path, text=text_dir / "a", progress=False)  # other input: rebuilt
    assert Corpus.load(path).manifest["totals"]["docs"] == 7
    assert not [p for p in tmp_path.joinpath("corpus").iterdir() if p.name.startswith(".")]


def test_single_file_and_split_rules(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("\ufeffhello\r\nworld\n")
    corpus = Corpus.load(prepare_corpus("one", cache_dir=tmp_path, text=tmp_path / "one.txt", progress=False))
    [(split, doc)] = [(s, d) for s in SPLITS for d in corpus.docs(s)]
    assert doc.id == "text:one.txt" and corpus.text(split, doc) == "hello\nworld" and doc.n_bytes == 11
    assert all(len(corpus.tokens(s)) == 0 for s in SPLITS if s != split)
    ids = [(f"doc{i}", "xx") for i in range(3)]
    assert sorted(assign_splits(ids).values()) == ["test", "train", "val"]
    assert assign_splits(ids) == assign_splits(reversed(ids))
    assert split_of("python-doc:library/os.rst:prose") in SPLITS
    assert format_bytes(999) == "999 B" and format_bytes(1_234_567) == "1.2 MB"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "empty.txt is empty"),
        ("blank.txt", b"  \n\n", "blank.txt is empty"),
        ("nul.dat", b"abc\x00def", "nul.dat is a binary file"),
        ("latin.txt", "café".encode("latin-1"), "latin.txt is not valid UTF-8"),
    ],
)
def test_bad_text_files_raise(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecruitError, match=message):
        prepare_corpus("bad", cache_dir=tmp_path / "cache", text=tmp_path / name, progress=False)
    assert not (tmp_path / "cache/corpus/bad").exists()


def test_text_errors(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/a.png").write_bytes(b"\x89PNG\x00")
    with pytest.raises(RecruitError, match="no usable text under"):
        prepare_corpus("bad", cache_dir=tmp_path, text=tmp_path / "bin", progress=False)
    with pytest.raises(RecruitError, match="no such file or directory"):
        prepare_corpus("bad", cache_dir=tmp_path, text=tmp_path / "missing", progress=False)
    with pytest.raises(RecruitError, match="language tag"):
        prepare_corpus("bad", cache_dir=tmp_path, text=tmp_path / "bin", lang="German", progress=False)


def test_missing_and_corrupt_corpora(text_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RecruitError, match="no corpus at .*run 'recruit data prepare' first"):
        Corpus.load("nothing", cache_dir=tmp_path)
    path = prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False)
    train = path / "train.bin"
    train.write_bytes(train.read_bytes()[:-7])
    with pytest.raises(RecruitError, match="corrupt corpus .*train.bin"):
        Corpus.load(path)
    prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False)  # a corrupt corpus is rebuilt
    assert len(Corpus.load(path).tokens("train")) == Corpus.load(path).manifest["splits"]["train"]["tokens"]
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(RecruitError, match="corrupt corpus"):
        Corpus.load(path)
    with pytest.raises(RecruitError, match="unknown split"):
        Corpus.load(prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False)).tokens("dev")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["splits"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecruitError, match="corrupt corpus .*lacks its split sizes"):
        Corpus.load(path)
    prepare_corpus("mine", cache_dir=tmp_path, text=text_dir, progress=False)  # rebuilt, like any corrupt corpus
    assert "train" in Corpus.load(path).summary()


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECRUIT_CACHE", str(tmp_path / "rc"))
    assert default_cache_dir() == tmp_path / "rc"
    monkeypatch.delenv("RECRUIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg/recruit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache/recruit"


def test_a_corpus_too_small_for_every_split_is_named(tmp_path: Path, caplog) -> None:
    """One document fills one split only: prepare warns, and training says the val data is what is missing."""
    from recruit.train import Trainer, make_config

    one = tmp_path / "one.txt"
    one.write_text("Ein einziger Text, lang genug für ein paar Fenster. " * 40, encoding="utf-8")
    path = prepare_corpus("one", cache_dir=tmp_path, text=one, lang="de", progress=False)
    assert "has no val or test text" in caplog.text
    corpus = Corpus.load(path)
    cfg = make_config("gpt-nano", overrides={"out_dir": str(tmp_path / "run")})
    with pytest.raises(RecruitError, match=r"the held-out \(val\) data has 0 tokens"):
        Trainer(cfg, corpus.tokens("train"), corpus.tokens("val"), progress=False)
