"""Markup to clean UTF-8 text: Sphinx reStructuredText (prose and code segments) and man-page roff.

Both converters (:func:`roff_to_text` lives in :mod:`recruit.data.roff`) are pure functions of a string, tolerant
of anything they do not know: an unknown directive keeps its content, an unknown roff request or escape is
dropped, and no markup is ever passed through.
"""

from __future__ import annotations

import re

from recruit.data.roff import roff_to_text

__all__ = ["roff_to_text", "rst_to_text"]

_ADORN = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")  # a section underline/overline or transition
_BULLET = re.compile(r"^([-*+•]|\d+[.)]|#\.|\(\d+\))\s+(?=\S)")
_FIELD = re.compile(r"^:([^:`]+):(?:\s+|$)")
_OPTION = re.compile(r"^:[\w -]+:(?:\s|$)")
_DIRECTIVE = re.compile(r"([\w:.+-]+?)::(?:\s+(.*))?$")
_CODE = {
    "code-block",
    "sourcecode",
    "code",
    "testcode",
    "testsetup",
    "testcleanup",
    "testoutput",
    "doctest",
    "productionlist",
    "parsed-literal",
}
_DROP = {
    "index",
    "module",
    "currentmodule",
    "sectionauthor",
    "moduleauthor",
    "codeauthor",
    "toctree",
    "include",
    "literalinclude",
    "tabularcolumns",
    "contents",
    "image",
    "figure",
    "highlight",
    "highlightlang",
    "raw",
    "limited-api-list",
    "miscnews",
    "default-role",
    "role",
    "program",
    "meta",
    "csv-table",
}
_TITLED = {"topic", "sidebar", "rubric", "admonition", "centered", "table"}
_LABELS = {
    "note": "Note",
    "warning": "Warning",
    "important": "Important",
    "caution": "Caution",
    "tip": "Tip",
    "hint": "Hint",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "seealso": "See also",
    "impl-detail": "CPython implementation detail",
    "availability": "Availability",
    "versionadded": "New in version {}",
    "versionchanged": "Changed in version {}",
    "deprecated": "Deprecated since version {}",
    "deprecated-removed": "Deprecated since version {}, will be removed in version {}",
}
_OBJECTS = {
    "function": "",
    "method": "",
    "data": "",
    "attribute": "",
    "class": "class ",
    "exception": "exception ",
    "decorator": "@",
    "decoratormethod": "@",
    "classmethod": "classmethod ",
    "staticmethod": "static ",
    "abstractmethod": "abstractmethod ",
    "coroutinefunction": "coroutine ",
    "coroutinemethod": "coroutine ",
    "awaitablefunction": "awaitable ",
    "awaitablemethod": "awaitable ",
    "cmdoption": "",
    "option": "",
    "envvar": "",
    "opcode": "",
    "pdbcommand": "",
    "describe": "",
    "object": "",
    "monitoring-event": "",
}
_ROLE = re.compile(r":(?:[a-zA-Z][\w+-]*:)?([a-zA-Z][\w+-]*):`((?:[^`\\]|\\.)+)`", re.S)
_INLINE = [  # (pattern, replacement) applied in order to prose once literals and roles are protected
    (re.compile(r"`([^`<]*?)\s*<([^`>]*)>`__?", re.S), lambda m: m.group(1) or m.group(2)),
    (re.compile(r"`([^`]+)`__?", re.S), r"\1"),
    (re.compile(r"`([^`]+)`", re.S), r"\1"),
    (re.compile(r"(?<![\w*\\])\*\*(?=\S)(.+?)(?<=\S)\*\*(?!\w)", re.S), r"\1"),
    (re.compile(r"(?<![\w*\\])\*(?=[^\s*])(.+?)(?<=[^\s\\])\*(?![\w*])", re.S), r"\1"),
    (re.compile(r"\s?\[(?:#[\w-]*|\d+|\*)\]_"), ""),
    (re.compile(r"\[([A-Za-z][\w.-]*)\]_"), r"[\1]"),
    (re.compile(r"\|(\S(?:[^|\n]*\S)?)\|(?:__?)?"), r"\1"),
    (re.compile(r"\b([A-Za-z][\w.-]*[A-Za-z0-9])__?(?=[\s.,;:!?)'\"]|$)"), r"\1"),
    (re.compile(r"\\ "), ""),
    (re.compile(r"\\(.)"), r"\1"),
    (re.compile(r" --- "), " — "),
]


def rst_to_text(src: str) -> list[tuple[str, str]]:
    """Convert Sphinx reStructuredText to clean text segments.

    Args:
        src: The reStructuredText source (e.g. a ``.rst.txt`` file of the Python documentation).

    Returns:
        ``(kind, text)`` segments in document order, ``kind`` being ``"prose"`` or ``"code"``; consecutive
        segments of one kind are merged, paragraphs separated by one blank line.
    """
    out: list[tuple[str, str]] = []
    _blocks([line.rstrip() for line in src.expandtabs(8).splitlines()], out)
    merged: list[list[str]] = []
    for kind, text in out:
        text = re.sub(r"\n\s*\n", "\n\n", "\n".join(line.rstrip() for line in text.strip("\n").split("\n")))
        if text.strip():
            if merged and merged[-1][0] == kind:
                merged[-1][1] += "\n\n" + text
            else:
                merged.append([kind, text])
    return [(kind, text) for kind, text in merged]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take(lines: list[str], i: int) -> tuple[list[str], int]:
    """The indented block starting at ``lines[i]`` (blank lines included) and the index after it."""
    j = i
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j])):
        j += 1
    while j > i and not lines[j - 1].strip():
        j -= 1
    return lines[i:j], j


def _dedent(block: list[str]) -> list[str]:
    width = min((_indent(line) for line in block if line.strip()), default=0)
    return [line[width:] for line in block]


def _prose(text: str) -> tuple[str, str]:
    return "prose", re.sub(r"\s+", " ", _inline(text)).strip()


def _blocks(lines: list[str], out: list[tuple[str, str]]) -> None:
    """Parse dedented ``lines`` into paragraphs and code blocks appended to ``out``."""
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
        elif _indent(line):  # block quote or definition body
            block, i = _take(lines, i)
            _blocks(_dedent(block), out)
        elif line == ".." or line.startswith(".. "):
            block, i = _take(lines, i + 1)
            _explicit(line[2:].strip(), _dedent(block), out)
        elif line.startswith(">>>"):
            j = i
            while j < n and lines[j].strip():
                j += 1
            out.append(("code", "\n".join(lines[i:j])))
            i = j
        elif (m := _BULLET.match(line) or _FIELD.match(line)) and not _ADORN.match(line):
            block, i = _take(lines, i + 1)
            sub: list[tuple[str, str]] = []
            _blocks([line[m.end() :], *_dedent(block)], sub)
            marker = m.group(1) + ":" if m.re is _FIELD else m.group(1)
            if sub and sub[0][0] == "prose":
                sub[0] = ("prose", f"{marker} {sub[0][1]}")
            out.extend(sub)
        elif line == "|" or line.startswith("| "):  # line block
            items: list[str] = []
            while i < n and lines[i].strip():
                if lines[i].startswith("|"):
                    items.append(lines[i][1:])
                elif items:
                    items[-1] += "\n" + lines[i]
                i += 1
            out.append(("prose", "\n".join(_prose(item)[1] for item in items)))
        elif line.startswith(("+-", "+=")) or re.match(r"^=+( +=+)+$", line):
            j = i
            while j < n and lines[j].strip():
                j += 1
            out.append(("prose", _table(lines[i:j])))
            i = j
        elif _ADORN.match(line):  # overline title, transition, or one-column table border
            if i + 2 < n and lines[i + 1].strip() and _ADORN.match(lines[i + 2]):
                out.append(_prose(lines[i + 1]))
                i += 3
            else:
                i += 1
        else:
            j = i
            while j < n and lines[j].strip() and not _indent(lines[j]) and not _ADORN.match(lines[j]):
                j += 1
            if j == i + 1 and j < n and _ADORN.match(lines[j]):  # section title
                out.append(_prose(line))
                i = j + 1
                continue
            text, i = "\n".join(lines[i:j]), j
            if not text.endswith("::"):
                out.append(_prose(text))
                continue
            text = text[:-2] if text[-3:-2].isspace() or text == "::" else text[:-1]
            if text.strip():
                out.append(_prose(text))
            block, i = _take(lines, i)  # the literal block (empty if the next text is not indented)
            if block:
                out.append(("code", "\n".join(_dedent(block))))


def _explicit(first: str, body: list[str], out: list[tuple[str, str]]) -> None:
    """An explicit markup block: directive, footnote, or (dropped) comment, target and substitution."""
    m = _DIRECTIVE.match(first)
    if not m:
        if footnote := re.match(r"\[[^\]]+\]\s*(.*)$", first):
            _blocks([footnote.group(1), *body], out)
        return
    name, arg = m.group(1).lower(), (m.group(2) or "").strip()
    k, signatures = 0, [arg] if arg else []
    while k < len(body) and body[k].strip() and (_OPTION.match(body[k]) or name in _OBJECTS or ":" in name):
        if not _OPTION.match(body[k]):  # more signatures of an object description
            signatures.append(body[k].strip())
        k += 1
    content = body[k:]
    if name in _DROP:
        return
    if name in _CODE:
        code = "\n".join(_dedent(content)).strip("\n")
        if name == "productionlist":
            code = code.replace("`", "")
        elif name == "parsed-literal":
            code = _inline(code)
        out.append(("code", code))
    elif name == "list-table":
        out.append(("prose", _list_table(content, arg)))
    elif name in _OBJECTS or ":" in name:
        out.append(("prose", "\n".join(_OBJECTS.get(name, "") + s for s in signatures)))
        _blocks(content, out)
    elif name == "audit-event":
        parts = arg.split()
        args = ", ".join(parts[1].split(",")) if len(parts) > 1 else ""
        words = f"argument{'s' if ',' in args else ''} {args}" if args else "no arguments"
        out.append(("prose", f"Raises an auditing event {parts[0] if parts else ''} with {words}."))
        _blocks(content, out)
    elif name in _LABELS:
        label = _LABELS[name]
        if n := label.count("{}"):
            parts = arg.split(None, n)
            label, arg = label.format(*(parts + [""] * n)[:n]).rstrip(", "), " ".join(parts[n:])
        sub: list[tuple[str, str]] = []
        _blocks(([arg] if arg else []) + content, sub)
        if sub and sub[0][0] == "prose":
            sub[0] = ("prose", f"{label}: {sub[0][1]}")
        else:
            sub.insert(0, ("prose", label + "."))
        out.extend(sub)
    else:
        if name in _TITLED and arg:
            out.append(_prose(arg))
        _blocks(content, out)


def _table(lines: list[str]) -> str:
    """Flatten a grid or simple table to one line per row, cells joined by ``" | "``."""
    grid = lines[0].startswith("+")
    if grid:
        bounds = [i for i, c in enumerate(lines[0]) if c == "+"]
        spans = list(zip([b + 1 for b in bounds], bounds[1:], strict=False))
    else:
        starts = [m.start() for m in re.finditer(r"=+", lines[0])]
        spans = list(zip(starts, [*starts[1:], 10**6], strict=True))
    rows: list[list[list[str]]] = []
    cells: list[list[str]] | None = None
    for line in lines[1:]:
        parts = [line[a:b] for a, b in spans]
        if line.startswith("+") or (not grid and re.fullmatch(r"[=\- ]+", line)):
            cells = None
        elif cells is None or not (grid or not parts[0].strip()):
            cells = [[p] for p in parts]
            rows.append(cells)
        else:
            for cell, p in zip(cells, parts, strict=True):
                cell.append(p)
    return "\n".join(" | ".join(t for t in map(_cell, row) if t) for row in rows)


def _cell(lines: list[str]) -> str:
    sub: list[tuple[str, str]] = []
    _blocks(_dedent([line.rstrip() for line in lines]), sub)
    return re.sub(r"\s+", " ", " ".join(text for _, text in sub)).strip()


def _list_table(content: list[str], title: str) -> str:
    """Flatten a ``list-table`` body (``* - cell`` rows) to one line per row."""
    rows: list[list[str]] = []
    for line in content:
        if m := re.match(r"^(\*|\s+)\s*- (.*)$", line):
            if m.group(1) == "*":
                rows.append([])
            if rows:
                rows[-1].append(m.group(2))
        elif line.strip() and rows and rows[-1]:
            rows[-1][-1] += "\n" + line.strip()
    text = "\n".join(" | ".join(_prose(c)[1] for c in row) for row in rows)
    return f"{_prose(title)[1]}\n{text}" if title else text


def _role(m: re.Match) -> str:
    role, body = m.group(1), re.sub(r"\s+", " ", m.group(2)).strip()
    titled = re.fullmatch(r"(.*?)\s*<([^<>]+)>", body, re.S)
    if titled and titled.group(1):
        return re.sub(r"\\(.)", r"\1", titled.group(1))
    body = re.sub(r"\\(.)", r"\1", titled.group(2) if titled else body).lstrip("!")
    if body.startswith("~"):
        body = body[1:].rsplit(".", 1)[-1]
    if role in ("func", "meth") and not body.endswith(")"):
        body += "()"
    prefix = {"pep": "PEP ", "rfc": "RFC ", "issue": "bpo-", "gh": "gh-"}.get(role)
    if prefix:
        body = prefix + body.split("#")[0]
    elif role in ("samp", "file"):
        body = re.sub(r"[{}]", "", body)
    elif role == "abbr":
        body = re.sub(r"\s*\(.*\)$", "", body)
    return body


def _inline(text: str) -> str:
    """Strip inline markup (roles, literals, emphasis, references, substitutions, escapes) from prose."""
    kept: list[str] = []

    def keep(s: str) -> str:
        kept.append(s)
        return f"\x00{len(kept) - 1}\x00"

    text = re.sub(r"``(.+?)``", lambda m: keep(m.group(1)), text, flags=re.S)
    text = _ROLE.sub(lambda m: keep(_role(m)), text)
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)
