"""Plain-text tables of records for the terminal."""

from __future__ import annotations

from recruit.records import Record


def _fmt(v: float) -> str:
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def format_records(records: list[Record]) -> str:
    """Records grouped by benchmark as aligned columns: case, metric, value, unit."""
    lines: list[str] = []
    for bench in dict.fromkeys(r.bench for r in records):
        rows = [(r.case, r.metric, _fmt(r.value), r.unit) for r in records if r.bench == bench]
        widths = [
            max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(("case", "metric", "value", "unit"))
        ]
        lines.append(f"== {bench} ==")
        header = ("case", "metric", "value", "unit")
        lines.append(
            "  ".join(h.ljust(w) if i != 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
        )
        for row in rows:
            lines.append(
                "  ".join(
                    c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines.append("")
    return "\n".join(lines)
