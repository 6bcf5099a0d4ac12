"""Recover result records from a ``docs/results.md`` that ``recruit report --markdown`` generated.

Until commit 8e075cb the record files behind ``docs/results.md`` lived in an ignored ``results/`` folder, and a
fresh checkout lost them. This script reads the generated page back into records, one file per section, so
that the page can be rebuilt from files the repository holds:

    python benchmarks/recover_records.py docs/results.md results/recovered --skip baseline "fff (x86_64)"

Each record keeps its section's bench, case, metric, value and unit, and the environment the page states
(device_name, torch, threads, commit), plus ``recovered``: where it was read from. Values are as the page
printed them (four significant digits; integers at 1,000 and above), so the page rebuilt from them is the same
text. Sections named by ``--skip`` are left out (the report's own ``baseline``, re-timed on every run, and
sections whose benchmark has been run again).
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from recruit.records import Record, write_records

_SECTION = re.compile(r"^## (?P<bench>\S+)(?: \((?P<device>.+)\))?$")
_ENV = re.compile(r"(\w+) `([^`]*)`")


def recover(page: str, source: str, skip: set[str]) -> dict[str, list[Record]]:
    """The records of each section of a generated page, keyed by section title, skipped sections left out."""
    sections: dict[str, list[Record]] = {}
    title, bench, env = None, "", {}
    for line in page.splitlines():
        if m := _SECTION.match(line):
            title, bench, env = line[3:], m["bench"], {}
        elif title is None or title in skip:
            continue
        elif line.startswith("Measured with "):
            env = {k: int(v) if k == "threads" else v for k, v in _ENV.findall(line)}
            env["recovered"] = source
        elif line.startswith("| ") and not line.startswith("| case |"):
            case, metric, value, unit = (c.strip() for c in line.strip("|").split(" | "))
            record = Record(bench, case, metric, float(value.replace(",", "")), unit, dict(env))
            sections.setdefault(title, []).append(record)
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--skip", nargs="*", default=[])
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(args.page)], capture_output=True, text=True, check=True
    ).stdout.strip()
    source = f"{args.page}@{commit} (as printed: 4 significant digits)"
    sections = recover(args.page.read_text(encoding="utf-8"), source, set(args.skip))
    for i, (title, records) in enumerate(sections.items(), 1):
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        path = write_records(args.out / f"{i:02d}-{slug}.jsonl", records)
        print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
