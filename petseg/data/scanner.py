"""Decode the files of a list of samples in threads; results cached by (path, size, mtime_ns)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from petseg.atomic import atomic_open
from petseg.data.faults import Report, judge
from petseg.data.layout import cache_place, sample_files
from petseg.data.oxford import trimap_raw

log = logging.getLogger("petseg.data.check")

CACHE_NAME = ".petseg-check-cache.json"
CACHE_VERSION = 1  # bump when inspect_file's result changes meaning


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


def cache_path(base: Path) -> Path:
    return cache_place(base, CACHE_NAME, "check-{key}.json")


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
        found = pool.map(inspect_file, paths, trimap)
        quiet = None if todo else True  # None: a bar on a terminal; nothing to scan: none
        bar = tqdm(found, total=len(todo), desc="scanning files", unit="file", disable=quiet)
        for rel, info in zip(todo, bar, strict=True):
            infos[rel] = info
            entries[rel] = [*keys[rel], info]
    if cache and (todo or changed):
        save_cache(cache, base, entries)
    faults = [f for name in names for f in judge(name, *(infos[r] for r in sample_files(name)))]
    cached = len(keys) - len(todo)
    return Report(base, names, faults, len(todo), cached, time.perf_counter() - start)
