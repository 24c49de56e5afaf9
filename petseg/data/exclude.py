"""annotations/exclude.txt (read, write) and the usable names of each split that setup keeps."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from petseg.data.faults import EXCLUDE, split_overlap
from petseg.data.layout import ANNOTATIONS, split_path, writable
from petseg.data.oxford import read_split
from petseg.data.scanner import scan, write_atomic
from petseg.errors import DataError

log = logging.getLogger("petseg.data.check")

MAX_LINES = 50  # per-file lines in a setup error or warning; the check CLI lists them all


def exclude_path(base: Path) -> Path:
    return Path(base) / ANNOTATIONS / EXCLUDE


def read_exclude(base: Path) -> set[str]:
    """Names in annotations/exclude.txt (first word of each line, `#` comments); none if absent."""
    path = exclude_path(base)
    if not path.is_file():
        return set()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the exclude list ({e}); fix or delete it") from None
    return {ln.split()[0] for ln in lines if ln.strip() and not ln.strip().startswith("#")}


def write_exclude(base: Path, names: Sequence[str]) -> Path:
    """annotations/exclude.txt with `names`, one per line, under a header saying what made it."""
    path = exclude_path(base)
    if not writable(path.parent):
        raise DataError(
            f"{path.parent}: read-only, cannot write {EXCLUDE}; copy the dataset somewhere "
            "writable, or train with data.skip_bad=true"
        )
    header = [
        "# Samples PetDataModule skips. Written by `python -m petseg.data.check --write-exclude`",
        f"# on {datetime.now():%Y-%m-%d %H:%M} from a full check of {base}: each has a fault that",
        "# stops training (unreadable/truncated file, image vs trimap size, trimap values outside",
        "# {1, 2, 3}, or a missing file); run the check to see which. Rewritten on each",
        "# --write-exclude, so hand edits are lost.",
    ]
    write_atomic(path, "\n".join([*header, *names]) + "\n")
    return path


def usable_names(
    base: Path, splits: dict[str, list[str]], root: str | Path, skip_bad: bool
) -> dict[str, list[str]]:
    """`splits` less exclude.txt's names and the samples with breaking faults.

    Breaking faults raise a DataError that starts with a one-line summary and lists the files,
    unless `skip_bad`, which drops those samples with one warning listing them.
    """
    exclude = read_exclude(base)
    kept = {split: [n for n in names if n not in exclude] for split, names in splits.items()}
    dropped = sum(map(len, splits.values())) - sum(map(len, kept.values()))
    if dropped:
        log.info("Skipping %d samples listed in %s", dropped, exclude_path(base))
    report = scan(base, [n for names in kept.values() for n in names])
    bad = set(report.bad_names())
    if bad:
        counts = []
        for split, names in kept.items():
            members = set(names)
            count = sum(f.name in members for f in report.blocking())
            if count:
                counts.append((split, count))
        noun = "bad file" if counts[0][1] == 1 else "bad files"
        summary = f"{counts[0][1]} {noun} in the {counts[0][0]} split" + "".join(
            f" and {n} in the {split} split" for split, n in counts[1:]
        )
        summary += f" of data.root={root}"
        lines = [f"  {f.line()}" for f in report.blocking()]
        if len(lines) > MAX_LINES:
            lines = [*lines[:MAX_LINES], f"  ... and {len(lines) - MAX_LINES} more"]
        if not skip_bad:
            raise DataError(
                f"{summary}: run `python -m petseg.data.check data.root={root}` or set "
                "data.skip_bad=true\n" + "\n".join(lines)
            )
        warnings.warn(f"data.skip_bad=true: skipping {summary}:\n" + "\n".join(lines), stacklevel=3)
        kept = {split: [n for n in names if n not in bad] for split, names in kept.items()}
    for split, names in kept.items():
        if not names:
            raise DataError(
                f"data.root={root}: no usable sample left in the {split} split after skipping "
                f"the bad and excluded ones; run `python -m petseg.data.check data.root={root}`"
            )
    return kept


def check_split_overlap(base: Path, root: str | Path) -> None:
    """DataError when trainval.txt and test.txt share a name not in exclude.txt: test leakage.

    Without a test list (a trainval-only copy) there is nothing to leak into.
    """
    if not split_path(base, "test").is_file():
        return
    exclude = read_exclude(base)
    faults = split_overlap(read_split(base, "trainval"), read_split(base, "test"))
    both = [f.name for f in faults if f.name not in exclude]
    if both:
        shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
        lists = f"{split_path(base, 'trainval')} and test.txt"
        noun = "name" if len(both) == 1 else "names"
        raise DataError(
            f"{lists} both list {len(both)} {noun} ({shown}): test images would be trained on; "
            "remove them from one list, or skip them with `python -m petseg.data.check "
            f"data.root={root} --write-exclude`"
        )
