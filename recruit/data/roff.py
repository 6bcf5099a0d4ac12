"""Man-page roff (man and mdoc macros, tbl tables) to plain text, the way ``man`` would show it, minus layout.

Text is filled into one line per paragraph, ``.nf``/``.EX`` blocks keep their lines, section headings and
``.TP`` tags stand on their own lines, and tables become one line per row with cells joined by ``" | "``.
Unknown requests and escapes are dropped, so no markup reaches the output.
"""

from __future__ import annotations

import re
import unicodedata

_NAMES = (
    "bu em en aq dq lq rq oq cq Fo Fc fo fc co rg tm at rs ha ti hy mi pl eq mu di +- de >= <= != -> <- "
    "ua da ra la sl bv ba or ga aa is if pd sd fm dg dd ps sc ct Po Ye Eu eu ss oe OE ae AE /o /O 12 14 34 "
    "S1 S2 S3 lB rB lC rC sq ci es <> ho cs AN no ap ~~ *= ** pc"
).split()
_CHARS = "•—–'\"“”‘’«»‹›©®™@\\^~--+=×÷±°≥≤≠→←↑↓⟩⟨/|||`´∫∞∂″′†‡¶§¢£¥€€ßœŒæÆøØ½¼¾¹²³[]{}□○∅↔˛♣∧¬≈≈≅*·"
GLYPHS: dict[str, str] = dict(zip(_NAMES, _CHARS, strict=True))
"""Named roff glyphs (``\\(xx`` and ``\\[xx]``) to characters; Greek ``*a`` and accented ``:a`` are added below."""
GLYPHS.update({"*" + a: b for a, b in zip("abgdezyhiklmncoprstufxqw", "αβγδεζηθικλμνξοπρστυφχψω", strict=True)})
GLYPHS.update({"*" + a: b for a, b in zip("ABGDEZYHIKLMNCOPRSTUFXQW", "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ", strict=True)})
_ACCENTS = {
    ":": "\u0308",
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    "~": "\u0303",
    ",": "\u0327",
    "o": "\u030a",
    "v": "\u030c",
}
_STRINGS = {"R": "®", "Tm": "™", "lq": "“", "rq": "”", "aq": "'"}
_SIMPLE = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "t": "\t",
    "'": "´",
    "`": "`",
    ".": ".",
    "\x01": " ",
}
_ESC = re.compile(
    r"""\\(?:
    ["\#].*                                           # comment to end of line
  | \((?P<g2>..) | \[(?P<gl>[^\]]*)\]                 # glyphs
  | \*(?:\((?P<s2>..)|\[(?P<sl>[^\]\s]*)[^\]]*\]|(?P<s1>.))  # defined strings
  | [fFmM](?:\(..|\[[^\]]*\]|.)                       # font, family, colour
  | s[-+]?(?:\(\d\d|\[[^\]]*\]|'[^']*'|\d)            # size
  | n[-+]?(?:\(..|\[[^\]]*\]|.)                       # number register
  | N'(?P<num>\d+)'                                   # character by number
  | [hvwoLlDZXbxRSACYB]'[^']*'                        # delimited motions, widths, overstrikes, ...
  | [kgV$](?:\(..|\[[^\]]*\]|.)                       # marks, formats, environment, macro arguments
  | (?P<ch>.)                                         # anything else: the character itself or nothing
)""",
    re.X,
)
_MDOC_DROP = {
    "Ar",
    "Cm",
    "Em",
    "Sy",
    "Li",
    "Pa",
    "Va",
    "Dv",
    "Er",
    "Ev",
    "Fa",
    "Fn",
    "Ft",
    "Fd",
    "Ic",
    "In",
    "Ad",
    "An",
    "Lb",
    "Tn",
    "Ux",
    "Sx",
    "Vt",
    "Ms",
    "No",
    "Pf",
    "Mt",
    "Lk",
    "Ta",
    "Ot",
    "Xo",
    "Xc",
    "St",
    "Aq",
    "Sm",
}
_MDOC_WRAP = {
    "Op": "[]",
    "Oo": "[",
    "Dq": "“”",
    "Do": "“",
    "Qq": '""',
    "Sq": "‘’",
    "Ql": "‘’",
    "Pq": "()",
    "Po": "(",
    "Bq": "[]",
    "Brq": "{}",
}
_MDOC_CLOSE = {"Oc": "]", "Dc": "”", "Pc": ")"}
_MDOC = _MDOC_DROP | _MDOC_WRAP.keys() | _MDOC_CLOSE.keys() | {"Fl", "Xr", "Nm", "Ns", "Nd"}


def _chr(code: int) -> str:
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code < 0xE000 else ""


def _glyph(name: str) -> str:
    if name in GLYPHS:
        return GLYPHS[name]
    if m := re.fullmatch(r"u([0-9A-Fa-f]{4,6}(?:_[0-9A-Fa-f]{4,6})*)", name):
        return unicodedata.normalize("NFC", "".join(_chr(int(h, 16)) for h in m.group(1).split("_")))
    if m := re.fullmatch(r"char(\d+)", name):
        return _chr(int(m.group(1)))
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def _escapes(text: str, strings: dict[str, str]) -> str:
    """Replace every escape sequence in ``text`` by the text it stands for (or nothing)."""

    def sub(m: re.Match) -> str:
        if m.group("g2") or m.group("gl") is not None:
            return _glyph(m.group("g2") or m.group("gl"))
        name = m.group("s2") or m.group("sl") or m.group("s1")
        if name:
            return _escapes(strings.get(name, ""), {}) if name in strings else ""
        if m.group("num"):
            return _chr(int(m.group("num")))
        ch = m.group("ch")
        return "" if ch is None else _SIMPLE.get(ch, ch if ch in "+<>[]!?@;=" else "")

    return _ESC.sub(sub, text)


def _args(text: str) -> list[str]:
    """Split a request's arguments, honouring ``"quoted strings"`` (with ``""`` for a quote)."""
    text = text.replace("\\ ", "\\\x01")
    return [
        m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
        for m in re.finditer(r'"((?:[^"]|"")*)"?|(\S+)', text)
    ]


class _Roff:
    """The formatter state: output lines, the current filled line, modes, defined strings, table state."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cur: list[str] = []  # pieces of the current output line
        self.fill, self.trap, self.join = True, False, False  # trap: break after the next text (tags, headings)
        self.strings = dict(_STRINGS)
        self.skip, self.last_if, self.name = "", True, ""  # skip: ".." in a macro definition, or brace depth
        self.url, self.mark, self.heading = "", (0, 0), -1  # heading: len(lines) just after a section heading
        self.tab, self.tbl, self.row = "\t", "", []
        self.tblock: list[str] | None = None

    def brk(self) -> None:
        if self.cur:
            self.lines.append(re.sub(r" +", " ", " ".join(self.cur)).strip() if self.fill else "".join(self.cur))
            self.cur = []

    def para(self) -> None:
        self.brk()
        if self.lines and self.lines[-1] and len(self.lines) != self.heading:
            self.lines.append("")

    def text(self, text: str) -> None:
        if self.join and self.cur:
            self.cur[-1] += text
        else:
            self.cur.append(text)
        self.join = False
        if not self.fill or self.trap:
            self.brk()
            self.trap, self.heading = False, len(self.lines) if self.heading == -2 else -1

    def line(self, raw: str) -> None:
        if self.skip:  # inside a macro definition or a false conditional block
            if self.skip == "..":
                self.skip = "" if raw.strip() == ".." else ".."
            else:
                depth = int(self.skip) + raw.count("\\{") - raw.count("\\}")
                self.skip = str(depth) if depth > 0 else ""
            return
        m = re.match(r"^[.']\s*([^\s\\]+|\\\"|)\s*(.*)$", raw)
        if m and m.group(1) in ("if", "ie", "el"):
            return self.conditional(m.group(1), m.group(2))
        raw = raw.replace("\\{", "").replace("\\}", "")
        if self.tbl:
            return self.table(raw)
        if m:
            return self.request(m.group(1), raw[m.start(2) :])
        if not raw.strip():
            return self.para() if self.fill else self.lines.append("")
        if self.fill and raw[0].isspace():
            self.brk()
        join = raw.endswith("\\c")
        self.text(_escapes(raw[:-2] if join else raw, self.strings))
        self.join = join

    def request(self, name: str, rest: str) -> None:
        args = [_escapes(a, self.strings) for a in _args(rest)]
        if name in ("SH", "SS", "Sh", "Ss"):
            self.para()
            self.trap, self.heading = True, -2
            if args:
                self.text(" ".join(args))
        elif name in ("PP", "LP", "P", "HP", "sp", "Pp", "Lp", "Sp", "TP", "IP", "bp"):
            self.para()
            self.trap = name == "TP"
            if name == "IP" and args and args[0]:
                self.cur.append(args[0])
                if len(args[0]) > 6:
                    self.brk()
        elif name in ("br", "TQ", "SY", "YS", "RS", "RE", "in", "ti", "ce", "nf", "fi", "EX", "EE", "It"):
            self.brk()
            self.trap = name == "TQ" or (name == "It" and bool(args))
            self.fill = name in ("fi", "EE") or (self.fill and name not in ("nf", "EX"))
            if name in ("SY", "ce") and args:
                self.text(" ".join(args))
            elif name == "It" and args:
                self.mdoc(args)
        elif name in ("B", "I", "SM", "SB") and args:
            self.text(" ".join(args))
        elif name == "OP" and args:
            self.text(f"[{' '.join(args)}]")
        elif len(name) == 2 and set(name) <= set("BIR"):
            self.text("".join(args))
        elif name in ("UR", "MT"):
            self.url, self.mark = (args[0] if args else ""), (len(self.lines), len(self.cur))
        elif name in ("UE", "ME"):
            if self.url:
                self.text(self.url if self.mark == (len(self.lines), len(self.cur)) else f"<{self.url}>")
            if args:
                self.join = True
                self.text("".join(args))
            self.url = ""
        elif name in ("URL", "MTO") and args:
            self.text(" ".join(args[1:2] or args[:1]) + "".join(args[2:]))
        elif name == "ds" and args:
            self.strings[args[0]] = (rest.split(None, 1)[1:] or [""])[0].removeprefix('"')
        elif name in ("de", "de1", "am", "ig"):
            self.skip = ".."
        elif name == "TS":
            self.para()
            self.tbl = "fmt"
        elif name in _MDOC:
            self.mdoc([name, *args])

    def conditional(self, name: str, rest: str) -> None:
        """``.if COND body``, ``.ie``/``.el``: only the nroff condition ``n`` is true (``!`` negates)."""
        if name == "el":
            ok, body = not self.last_if, rest
        else:
            cond, _, body = rest.strip().partition(" ")
            ok = (cond.lstrip("!") == "n") != cond.startswith("!")
            if name == "ie":
                self.last_if = ok
        if ok:
            body = body.strip().replace("\\{", "", 1).lstrip()
            if body:
                self.line(body)
        elif (depth := rest.count("\\{") - rest.count("\\}")) > 0:
            self.skip = str(depth)

    def mdoc(self, words: list[str]) -> None:
        """Render an mdoc line: callable macros (``Fl``, ``Xr``, ``Op``, ...) among plain words."""
        toks: list[tuple[str, bool]] = []  # (text, glued to the previous token)
        closers: list[str] = []
        glue, i = False, 0
        while i < len(words):
            w, i = words[i], i + 1
            plain = i < len(words) and words[i] not in _MDOC
            if w in _MDOC_CLOSE:
                toks.append((_MDOC_CLOSE[w], True))
                continue
            if w in _MDOC_WRAP:
                toks.append((_MDOC_WRAP[w][0], glue))
                closers += _MDOC_WRAP[w][1:]
                glue = True
                continue
            if w in _MDOC_DROP or w == "Ns":
                glue = glue or w == "Ns"
                continue
            if w == "Fl":
                w, i = "-" + (words[i] if plain else ""), i + plain
            elif w == "Xr" and i + 1 < len(words):
                w, i = f"{words[i]}({words[i + 1]})", i + 2
            elif w == "Nd":
                w = "—"
            elif w == "Nm":
                w, i = (words[i] if plain else self.name), i + plain
                self.name = self.name or w
            toks.append((w, glue or bool(re.fullmatch(r"[.,:;)\]?!]", w))))
            glue = False
        toks += [(c, True) for c in reversed(closers)]
        text = "".join(t if left or n == 0 else " " + t for n, (t, left) in enumerate(toks))
        if text.strip():
            self.text(text)

    def table(self, raw: str) -> None:
        """One line of a tbl block: options, format, data rows, ``T{ ... T}`` text blocks, ``.TE``."""
        if re.match(r"^[.']\s*TE", raw):
            self.tbl, self.tblock = "", None
            return self.para()
        if self.tbl == "fmt" or re.match(r"^[.']\s*T&", raw):
            if m := re.search(r"tab\s*\((.)\)", raw):
                self.tab = m.group(1)
            self.tbl = "data" if raw.rstrip().endswith(".") else "fmt"
            return
        if self.tblock is not None:
            if not raw.startswith("T}"):
                if not re.match(r"^[.']", raw):
                    self.tblock.append(_escapes(raw, self.strings).strip())
                return
            self.row.append(" ".join(self.tblock))
            self.tblock, raw = None, raw[2:].removeprefix(self.tab)
            if not raw:
                return self.row_end()
        elif re.match(r"^[.']", raw) or re.fullmatch(r"[\s_=|]*", raw):
            return
        for cell in raw.split(self.tab):
            if cell.strip() == "T{":
                self.tblock = []
            else:
                self.row.append(_escapes(cell, self.strings).strip())
        if self.tblock is None:
            self.row_end()

    def row_end(self) -> None:
        cells = [c for c in self.row if c and c not in ("_", "=")]
        if cells:
            self.lines.append(" | ".join(cells))
        self.row = []


def roff_to_text(src: str) -> str:
    """Convert a man page in roff (man or mdoc macros, tbl tables) to plain text.

    Args:
        src: The page source (already decompressed).

    Returns:
        The page as text, headings on their own lines and paragraphs separated by one blank line; ``""`` for
        a ``.so`` alias page.
    """
    lines = re.sub(r"(?<!\\)\\\n", "", src.replace("\r\n", "\n")).split("\n")
    meaningful = [x for x in lines if x.strip() and not re.match(r"^[.']\s*(\\\"|$)", x)]
    if meaningful and re.match(r"^[.']\s*so\s", meaningful[0]):
        return ""
    r = _Roff()
    for raw in lines:
        r.line(raw)
    r.brk()
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", "\n".join(line.rstrip() for line in r.lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
