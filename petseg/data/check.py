"""`python -m petseg.data.check data.root=... [--write-exclude] [--workers N]`: find bad data files.

Decodes every image and trimap named in annotations/trainval.txt and test.txt (a thread pool: PIL
releases the GIL while it decodes) and prints each fault per file, in two groups:

- breaking, training stops on them: `unreadable`, `truncated`, `unsupported-mode` (no faithful RGB
  conversion, e.g. 16-bit), `size-mismatch` (image vs trimap), `trimap-values` (outside {1, 2, 3}),
  `missing-image`, `missing-trimap` (a split list names a sample with no file);
- handled by the reader, listed for information: `format-mismatch` (e.g. PNG or GIF bytes in a .jpg:
  PIL opens files by content) and `mode` (grayscale, RGBA, palette, CMYK: converted to RGB).

Exit status: 0 when no breaking fault is left outside annotations/exclude.txt (handled faults alone
give 0), which is exactly when `PetDataModule.setup` will not stop on this data; 1 when breaking
faults remain; 2, with one line, when data.root holds no dataset, a split list is missing or empty,
or the exclude list cannot be written. `--write-exclude` (re)writes annotations/exclude.txt with the
name of every sample that has a breaking fault; PetDataModule skips the names listed there, so the
same run then exits 0.

Per-file results are cached by (path, size, mtime_ns) in <dataset>/.petseg-check-cache.json (in
~/.cache/petseg/ when the dataset folder is read-only), so a second check or `setup` over unchanged
files decodes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from petseg.atomic import atomic_open
from petseg.data.oxford import BASE_FOLDER, find_base, read_split, trimap_raw
from petseg.errors import DataError, PetsegError

log = logging.getLogger("petseg.data.check")

CACHE_NAME = ".petseg-check-cache.json"
CACHE_VERSION = 1  # bump when inspect_file's result changes meaning
EXCLUDE = "exclude.txt"  # in annotations/, beside the split lists
BREAKING = frozenset(
    {
        "unreadable",
        "truncated",
        "unsupported-mode",
        "size-mismatch",
        "trimap-values",
        "missing-image",
        "missing-trimap",
    }
)
# Modes whose .convert("RGB") is faithful; others (I;16, I, F) would come out clipped.
RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
MAX_LINES = 50  # per-file lines in a setup error or warning; the check CLI lists them all


@dataclass(frozen=True)
class Fault:
    """One problem of one file: `kind` is a name from the module docstring."""

    name: str  # the sample, as the split list names it
    path: str  # the file, relative to the dataset folder
    kind: str
    detail: str

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING

    def line(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


@dataclass
class Report:
    """Faults of a list of samples, and what the scan cost."""

    base: Path
    names: list[str]
    faults: list[Fault]
    decoded: int
    cached: int
    seconds: float
    excluded: set[str] = field(default_factory=set)

    def bad_names(self) -> list[str]:
        """Samples with a breaking fault, in scan order (what --write-exclude writes)."""
        return list(dict.fromkeys(f.name for f in self.faults if f.breaking))

    def blocking(self) -> list[Fault]:
        """Breaking faults not covered by the exclude list: training would stop on these."""
        return [f for f in self.faults if f.breaking and f.name not in self.excluded]

    def text(self) -> str:
        breaking = [f for f in self.faults if f.breaking]
        handled = [f for f in self.faults if not f.breaking]
        lines = [
            f"petseg data check of {self.base}",
            f"  {len(self.names)} samples: {self.decoded} files decoded, {self.cached} from the "
            f"cache, {self.seconds:.2f} s",
        ]
        if breaking:
            lines.append(
                f"Breaking (training stops on these; --write-exclude or data.skip_bad=true skips "
                f"them): {len(breaking)} files of {len(self.bad_names())} samples"
            )
            lines += [
                f"  {f.line()}" + ("  [excluded]" if f.name in self.excluded else "")
                for f in breaking
            ]
        if handled:
            lines.append(f"Handled by the reader (information only): {len(handled)} files")
            lines += [f"  {f.line()}" for f in handled]
        clean = sorted(self.excluded & set(self.names) - set(self.bad_names()))
        if clean:
            lines.append(
                f"annotations/{EXCLUDE} lists {len(clean)} samples that are now clean "
                f"({', '.join(clean[:5])}{', ...' if len(clean) > 5 else ''}); "
                "--write-exclude drops them"
            )
        blocking = self.blocking()
        if blocking:
            lines.append(
                f"Result: {len(blocking)} breaking files outside annotations/{EXCLUDE} (exit 1)"
            )
        else:
            lines.append(f"Result: no breaking file outside annotations/{EXCLUDE} (exit 0)")
        return "\n".join(lines)


def inspect_file(path: Path, trimap: bool) -> dict[str, Any]:
    """Decode one file fully: format, mode, size; for a trimap also raw values outside {1, 2, 3}.

    Any decode failure becomes {"error": message}: the check reports it instead of stopping.
    """
    try:
        with Image.open(path) as img:
            info: dict[str, Any] = {"format": img.format, "mode": img.mode, "size": img.size}
            img.load()  # the full decode: a truncated file fails here, not at open
            if trimap:
                raw = trimap_raw(img)
                info["bad_values"] = [int(v) for v in np.unique(raw[(raw < 1) | (raw > 3)])[:5]]
    except Exception as e:  # PIL raises many types for a bad file; each is a finding here
        return {"error": f"{type(e).__name__}: {e}"}
    info["size"] = list(info["size"])
    return info


def sample_files(name: str) -> tuple[str, str]:
    """Image and trimap of a sample, relative to the dataset folder (as PetTrimaps.paths)."""
    return f"images/{name}.jpg", f"annotations/trimaps/{name}.png"


def writable(folder: Path) -> bool:
    """Writable and not marked read-only: root may write anywhere, but shared data has no w bits."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK)
    except OSError:
        return False


def cache_path(base: Path) -> Path:
    if writable(base):
        return base / CACHE_NAME
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:16]
    return cache_home / "petseg" / f"check-{key}.json"


def load_cache(path: Path, base: Path) -> dict[str, list]:
    """{relative path: [size, mtime_ns, info]}; a missing, unreadable or foreign cache is empty."""
    try:
        data = json.loads(path.read_text())
        if data["version"] == CACHE_VERSION and data["base"] == str(base.resolve()):
            return dict(data["files"])
    except Exception:  # a cache is only ever a shortcut: any problem means decode again
        pass
    return {}


def write_atomic(path: Path, text: str) -> None:
    """A crash leaves the old file or the new, never half of one."""
    with atomic_open(path, "w") as f:
        f.write(text)


def save_cache(path: Path, base: Path, files: dict[str, list]) -> None:
    data = {"version": CACHE_VERSION, "base": str(base.resolve()), "files": files}
    try:
        write_atomic(path, json.dumps(data, separators=(",", ":")))
    except OSError as e:
        log.warning(
            "Cannot write the data check cache %s (%s); the next check decodes again", path, e
        )


def judge(name: str, image: dict[str, Any] | None, trimap: dict[str, Any] | None) -> list[Fault]:
    """The faults of one sample from its files' inspections (None: the file does not exist)."""
    image_rel, trimap_rel = sample_files(name)
    faults = []
    for rel, info, what in ((image_rel, image, "image"), (trimap_rel, trimap, "trimap")):
        if info is None:
            faults.append(
                Fault(name, rel, f"missing-{what}", "named in a split list, no such file")
            )
        elif "error" in info:
            kind = "truncated" if "truncated" in info["error"] else "unreadable"
            faults.append(Fault(name, rel, kind, f"cannot decode ({info['error']})"))
        else:
            expected = {".jpg": "JPEG", ".png": "PNG"}[Path(rel).suffix]
            if info["format"] != expected:
                detail = f"{info['format']} data in a {Path(rel).suffix} file; read by content"
                faults.append(Fault(name, rel, "format-mismatch", detail))
    if image and "error" not in image and image["mode"] != "RGB":
        if image["mode"] in RGB_MODES:
            detail = f"{image['mode']}; the reader converts it to RGB"
            faults.append(Fault(name, image_rel, "mode", detail))
        else:
            detail = f"{image['mode']} has no faithful RGB conversion; re-save as 8-bit RGB"
            faults.append(Fault(name, image_rel, "unsupported-mode", detail))
    if trimap and "error" not in trimap:
        if trimap["mode"] not in ("L", "P"):
            detail = f"{trimap['mode']}; the reader converts it to L"
            faults.append(Fault(name, trimap_rel, "mode", detail))
        if trimap["bad_values"]:
            detail = f"values {trimap['bad_values']} outside {{1, 2, 3}} (pet, background, border)"
            faults.append(Fault(name, trimap_rel, "trimap-values", detail))
    if image and trimap and "error" not in image and "error" not in trimap:
        (iw, ih), (tw, th) = image["size"], trimap["size"]
        if (iw, ih) != (tw, th):
            detail = f"image is {iw}x{ih} but its trimap {Path(trimap_rel).name} is {tw}x{th}"
            faults.append(Fault(name, image_rel, "size-mismatch", detail))
    return faults


def scan(
    base: Path, names: Iterable[str], workers: int | None = None, use_cache: bool = True
) -> Report:
    """Inspect the files of `names`; only files new or changed since the cached scan are decoded."""
    start = time.perf_counter()
    base = Path(base)
    names = list(dict.fromkeys(names))
    cache = cache_path(base) if use_cache else None
    entries = load_cache(cache, base) if cache else {}
    changed = False  # write the cache only when an entry was added, replaced or dropped
    infos: dict[str, dict[str, Any] | None] = {}
    keys: dict[str, list[int]] = {}
    for name in names:
        for rel in sample_files(name):
            try:
                st = os.stat(base / rel)
            except FileNotFoundError:
                infos[rel] = None
                changed |= entries.pop(rel, None) is not None
                continue
            except OSError as e:
                infos[rel] = {"error": f"{type(e).__name__}: {e}"}
                continue
            keys[rel] = [st.st_size, st.st_mtime_ns]
            hit = entries.get(rel)
            if isinstance(hit, list) and len(hit) == 3 and hit[:2] == keys[rel]:
                infos[rel] = hit[2]
    todo = [rel for rel in keys if rel not in infos]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        paths, trimap = [base / r for r in todo], [r.startswith("annotations/") for r in todo]
        for rel, info in zip(todo, pool.map(inspect_file, paths, trimap), strict=True):
            infos[rel] = info
            entries[rel] = [*keys[rel], info]
    if cache and (todo or changed):
        save_cache(cache, base, entries)
    faults = [f for name in names for f in judge(name, *(infos[r] for r in sample_files(name)))]
    cached = len(keys) - len(todo)
    return Report(base, names, faults, len(todo), cached, time.perf_counter() - start)


def exclude_path(base: Path) -> Path:
    return Path(base) / "annotations" / EXCLUDE


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
                f"data.root={root}: no Oxford-IIIT Pet dataset there (expected "
                f"{Path(root) / BASE_FOLDER}/images and annotations/trimaps, or those in data.root "
                "itself); point data.root at the folder that holds oxford-iiit-pet/"
            )
        names = [*read_split(base, "trainval"), *read_split(base, "test")]
        report = scan(base, names, args.workers)
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
