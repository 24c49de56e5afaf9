"""The report CLI: report() writes report.md, .csv and .png for a sweep; main() parses argv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from petseg.errors import PetsegError
from petseg.report.jobs import JobRow, collect
from petseg.report.plot import draw_report
from petseg.report.tables import markdown_table, write_csv, write_markdown


def report(path: Path, out: Path | None = None) -> list[JobRow]:
    """Write report.md, report.csv and report.png for the runs under `path` into `out` (or path)."""
    rows = collect(path)
    out = out or path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PetsegError(
            f"--out {out}: cannot create it ({e.strerror}); pass a writable folder"
        ) from None
    write_markdown(rows, path, out / "report.md")
    write_csv(rows, out / "report.csv")
    draw_report(rows, out / "report.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m petseg.report",
        description="Compare the runs of a sweep: report.md, report.csv, report.png.",
    )
    parser.add_argument(
        "path", type=Path, help="outputs/multirun/<date>/<time>, a run folder, or a folder of runs"
    )
    parser.add_argument("--out", type=Path, help="folder for report.{md,csv,png} (default: PATH)")
    args = parser.parse_args(argv)
    try:
        rows = report(args.path, args.out)
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print(f"Wrote report.md, report.csv, report.png to {args.out or args.path}", file=sys.stderr)
    return 0
