"""`python -m petseg.data.check data.root=... [--write-exclude] [--workers N]`: find bad data files.

Decodes every image and trimap of trainval.txt and test.txt (in threads) and lists each fault per
file: breaking ones (faults.BREAKING: setup stops on them) and ones the reader handles. Exit 0
exactly when setup will not stop (no breaking fault outside annotations/exclude.txt), 1 otherwise,
2 without a dataset or split list. The scan is petseg.data's faults, scanner and exclude, the
same code setup runs, so this report and setup agree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from petseg.data.exclude import read_exclude, write_exclude
from petseg.data.faults import EXCLUDE, split_overlap
from petseg.data.layout import BASE_FOLDER, find_base, no_dataset
from petseg.data.oxford import read_split
from petseg.data.scanner import scan
from petseg.errors import DataError, PetsegError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m petseg.data.check",
        description="Find unreadable, mismatched or missing files of an Oxford-IIIT Pet dataset.",
        epilog="Exit status: 0 clean (or every bad sample excluded), 1 bad files, 2 no dataset.",
    )
    parser.add_argument("overrides", nargs="*", metavar="data.root=PATH", help="default: data")
    parser.add_argument(
        "--write-exclude",
        action="store_true",
        help=f"write annotations/{EXCLUDE}: the samples PetDataModule should skip",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)"
    )
    args = parser.parse_args(argv)
    root = "data"
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if key.lstrip("+") != "data.root" or not sep or not value:
            parser.error(f"unknown argument {item!r}: the one override is data.root=PATH")
        root = value
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers={args.workers} must be >= 1")
    try:
        base = find_base(root)
        if base is None:
            raise DataError(
                f"{no_dataset(root)}; point data.root at the folder that holds {BASE_FOLDER}/"
            )
        trainval, test = read_split(base, "trainval"), read_split(base, "test")
        report = scan(base, [*trainval, *test], args.workers)
        report.faults += split_overlap(trainval, test)
        report.excluded = read_exclude(base)
        if args.write_exclude:
            path = write_exclude(base, report.bad_names())
            report.excluded = set(report.bad_names())
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.text())
    if args.write_exclude:
        print(f"Wrote {len(report.bad_names())} names to {path}")
    return 1 if report.blocking() else 0


if __name__ == "__main__":
    sys.exit(main())
