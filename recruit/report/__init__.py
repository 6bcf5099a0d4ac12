"""``recruit report``: measure the shipped defaults, then write records, an HTML page and a terminal table.

Each registered benchmark with ``in_report=True`` runs on the shipped checkpoints; records of other runs
(``recruit bench NAME --out DIR``, GPU machines) can be folded into the same page with ``include``.
"""

from __future__ import annotations

import logging
import time
from html import escape
from pathlib import Path

from recruit.benchmarks import BenchOptions, all_benches
from recruit.errors import RecruitError
from recruit.io import atomic_write_text
from recruit.records import Record, environment, read_records, write_records
from recruit.report.html import page
from recruit.report.terminal import format_records

log = logging.getLogger(__name__)


def run_report(
    out: str | Path = "report",
    opts: BenchOptions | None = None,
    include: list[str | Path] | None = None,
    prepare: bool = True,
) -> tuple[list[Record], Path]:
    """Run the report benchmarks and write ``out/results.jsonl`` and ``out/index.html``.

    Args:
        out: Output directory.
        opts: Options passed to every benchmark.
        include: Extra record files to add to the page (their records are copied into results.jsonl).
        prepare: Build the default corpus first when it is missing.

    Returns:
        The records and the path of the HTML page.
    """
    opts = opts or BenchOptions()
    out = Path(out)
    included = [r for f in include or [] for r in read_records(f)]  # read first: a bad file fails before any work
    if prepare:
        _ensure_corpus(opts)
    records: list[Record] = []
    timings = {}
    for bench in all_benches().values():
        if not bench.in_report:
            continue
        t0 = time.perf_counter()
        log.info("running %s", bench.name)
        records += bench.run(opts)
        timings[bench.name] = time.perf_counter() - t0
    records += included
    sections = [("Summary", _summary(records, timings))]
    for bench in all_benches().values():
        if bench.section is not None and any(r.bench == bench.name for r in records):
            sections.append((f"{bench.name}: {bench.summary}", _section(bench, records)))
    env = records[0].env if records else environment()
    html_path = out / "index.html"
    write_records(out / "results.jsonl", records)  # the records and their page, written together
    atomic_write_text(html_path, page("recruit report", sections, env))
    return records, html_path


def _section(bench, records: list[Record]) -> str:
    """``bench``'s section of the page; one that cannot be drawn from these records says so instead of failing.

    A section reads the case fields its own benchmark writes; records cut short (a partial file) or written by
    another version may lack some. The records themselves still go to ``results.jsonl`` and the tables.
    """
    try:
        return bench.section(records)
    except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError) as e:
        log.warning("the %s section could not be drawn from these records (%s: %s)", bench.name, type(e).__name__, e)
        why = escape(f"{type(e).__name__}: {e}")
        return f"<p>This section could not be drawn from the {bench.name} records given ({why}); see results.jsonl.</p>"


def _ensure_corpus(opts: BenchOptions) -> None:
    """Build the default Debian corpus when it is missing; any other corpus must have been prepared."""
    from recruit.data.corpus import Corpus, prepare_corpus

    try:
        Corpus.load(opts.corpus)
    except RecruitError:
        if opts.corpus != "debian":
            raise
        log.info("preparing the default corpus (first run)")
        prepare_corpus(name="debian", progress=opts.progress)


def _summary(records: list[Record], timings: dict[str, float]) -> str:
    from recruit.report.html import table

    by: dict[str, int] = {}
    for r in records:
        by[r.bench] = by.get(r.bench, 0) + 1
    rows = [[name, n, f"{timings[name]:.1f} s" if name in timings else "included"] for name, n in by.items()]
    return (
        "<p>Every figure on this page is a record in <code>results.jsonl</code>, written by the run that "
        "measured it.</p>" + table(["benchmark", "records", "run time"], rows)
    )


__all__ = ["format_records", "run_report"]
