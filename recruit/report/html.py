"""Self-contained HTML: tables, and matplotlib plots embedded as base64 PNG (no network, no external files)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1f24;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #d0d7de;padding:.25em .6em}
th{background:#f6f8fa;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f6f8fa;padding:0 .2em}img{max-width:100%}.env{color:#57606a;font-size:.85em}
"""


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table of plain-text cells (escaped here: cases, metrics and units come from record files)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{_num(c)}>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def device_labels(records: Sequence) -> Callable[[object], str]:
    """A function naming a record's device, and its run (commit, source hash) where ``records`` hold several."""

    def device(r) -> str:
        return str(r.env.get("device_name", r.env.get("device")))

    def run(r) -> str:
        commit, source = r.run
        return commit + (f" ({source})" if source else "")

    runs: dict[str, set[str]] = {}
    for r in records:
        runs.setdefault(device(r), set()).add(run(r))

    def label(r) -> str:
        d = device(r)
        return d + (f" @ {run(r)}" if len(runs.get(d, ())) > 1 else "")

    return label


def _num(c: object) -> str:
    s = str(c).replace(",", "").replace(".", "", 1).lstrip("-")
    return ' class="num"' if s.isdigit() else ""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w: float = 6.0, h: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> str:
    """A bar chart as an ``<img>`` tag."""
    fig, ax = _figure()
    ax.bar(list(labels), list(values), color="#4c78a8")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _png(fig)


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> str:
    """Lines ``{label: (xs, ys)}`` as an ``<img>`` tag."""
    fig, ax = _figure()
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def page(title: str, sections: Sequence[tuple[str, str]], env: dict | None = None) -> str:
    """A whole HTML document from ``(heading, html)`` sections."""
    env_html = ""
    if env:
        env_html = '<p class="env">' + ", ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in env.items())
        env_html += "</p>"
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{s}\n" for h, s in sections)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{env_html}{body}</body></html>\n"
    )
