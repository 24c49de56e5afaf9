"""Decoded cache: each sample read once by load_pair at S x S, into uint8 arrays every process maps.

<root>/<label>-<S>px-<key>/ holds images.npy (N, S, S, 3), masks.npy (N, S, S) and manifest.json;
root is <dataset>/.petseg-cache, or $XDG_CACHE_HOME/petseg/decoded-<hash> if that is read-only.
The key hashes the sorted names, each file's size and mtime_ns, S and CACHE_VERSION. The manifest,
written last, holds each array's sha256: ensure_cache checks it once per setup (workers just map)
and rebuilds a cache that is missing, foreign, torn or changed in place; a lock builds it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from petseg.atomic import atomic_open
from petseg.data.layout import cache_place, sample_files, sample_paths
from petseg.data.oxford import load_pair
from petseg.errors import DataError

log = logging.getLogger("petseg.data.cache")

# Bump when what a cache holds changes meaning (resize, label mapping, layout); 2: labels are
# resized once from full resolution, manifests hold checksums.
CACHE_VERSION = 2
FOLDER = ".petseg-cache"
MANIFEST = "manifest.json"
IMAGES, MASKS = "images.npy", "masks.npy"
SPARE_BYTES = 64 * 2**20  # keep this much disk free after a build


def cache_root(base: Path) -> Path:
    """<dataset>/.petseg-cache, or a per-dataset folder in the user cache when that is read-only."""
    return cache_place(base, FOLDER, "decoded-{key}")


def cache_key(base: Path, names: Sequence[str], size: int) -> str:
    """Hash of (name, image size, mtime_ns, trimap size, mtime_ns) of each sample, S, version."""
    files = []
    for name in names:
        entry: list[Any] = [name]
        for rel in sample_files(name):
            try:
                st = os.stat(base / rel)
            except OSError as e:
                raise DataError(f"{base / rel}: cannot stat ({e}); run petseg.data.check") from None
            entry += [st.st_size, st.st_mtime_ns]
        files.append(entry)
    payload = json.dumps([CACHE_VERSION, size, files], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def shapes(count: int, size: int) -> dict[str, tuple[int, ...]]:
    return {IMAGES: (count, size, size, 3), MASKS: (count, size, size)}


class DecodedArrays:
    """Rows of one decoded cache, in the order of `names`: what PetTrimaps(cache=...) reads.

    The memory maps open on the first read in each process and are not pickled, so a spawned
    DataLoader worker maps the files itself instead of receiving a copy of the arrays.
    """

    def __init__(self, folder: Path, names: Sequence[str], rows: Sequence[int]) -> None:
        self.folder = Path(folder)
        self.names = list(names)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def select(self, names: Sequence[str]) -> DecodedArrays:
        """The rows of a subset of names (the train or val part of a trainval cache)."""
        row_of = dict(zip(self.names, self.rows.tolist(), strict=True))
        return DecodedArrays(self.folder, names, [row_of[name] for name in names])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, S, S, 3), masks (N, S, S)), memory-mapped read-only."""
        if self._arrays is None:
            try:
                self._arrays = (
                    np.load(self.folder / IMAGES, mmap_mode="r"),
                    np.load(self.folder / MASKS, mmap_mode="r"),
                )
            except (OSError, ValueError) as e:
                raise DataError(
                    f"{self.folder}: decoded cache unreadable ({e}); delete that folder (setup "
                    "rebuilds it) or set data.cache=false"
                ) from None
        return self._arrays

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 (S, S, 3) and mask uint8 (S, S) of sample `index`: writable copies."""
        images, masks = self.arrays()
        row = self.rows[index]
        return np.array(images[row]), np.array(masks[row])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}


def digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_valid(folder: Path, key: str, names: list[str], size: int) -> bool:
    """The manifest is this key's and the arrays have its shapes, byte sizes and checksums.

    A checksum mismatch (bytes changed in place) warns once, naming the folder; the rest is silent.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if (manifest["version"], manifest["key"]) != (CACHE_VERSION, key):
            return False
        if manifest["names"] != names or manifest["size"] != size:
            return False
        for file, shape in shapes(len(names), size).items():
            path = folder / file
            if path.stat().st_size != manifest["bytes"][file]:
                return False
            array = np.load(path, mmap_mode="r")  # a truncated file fails here (mmap length)
            if array.shape != shape or array.dtype != np.uint8:
                return False
        changed = [f for f in (IMAGES, MASKS) if digest(folder / f) != manifest["sha256"][f]]
    except Exception:  # a cache is only a shortcut: any doubt means build it again
        return False
    if changed:
        warnings.warn(
            f"{folder}: decoded cache changed on disk ({', '.join(changed)} checksum differs "
            "from its manifest); rebuilding it",
            stacklevel=3,
        )
    return not changed


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created): one builder at a time, the others wait."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_header(f: Any, shape: tuple[int, ...], hasher: Any) -> None:
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)  # padded: data starts 64-byte aligned
    f.write(buffer.getvalue())
    hasher.update(buffer.getvalue())


def build(
    base: Path, folder: Path, key: str, names: list[str], size: int, workers: int | None = None
) -> dict[str, Any]:
    """Decode `names` in a thread pool and write the arrays, then the manifest; returns it."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # the arrays change first: no manifest, no reader
    for stale in folder.glob(".*.tmp"):  # a killed build's temp files (we hold the lock)
        stale.unlink(missing_ok=True)
    layout = shapes(len(names), size)
    need = sum(math.prod(shape) for shape in layout.values())
    free = shutil.disk_usage(folder).free
    if free < need + SPARE_BYTES:
        raise OSError(f"needs {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")

    def decode(name: str) -> tuple[np.ndarray, np.ndarray]:
        return load_pair(*sample_paths(base, name), size)

    workers = workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max(1, min(workers, len(names))))
    hashers = {file: hashlib.sha256() for file in layout}  # over the bytes as written
    try:
        with ExitStack() as stack:
            files = {file: stack.enter_context(atomic_open(folder / file)) for file in layout}
            for file, shape in layout.items():
                write_header(files[file], shape, hashers[file])
            decoded = pool.map(decode, names)  # in order: row i is names[i]
            bar = tqdm(decoded, total=len(names), desc="decoded cache", unit="img", disable=None)
            for arrays in bar:
                for file, array in zip(layout, arrays, strict=True):
                    data = np.ascontiguousarray(array, dtype=np.uint8).data
                    files[file].write(data)
                    hashers[file].update(data)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    manifest = {
        "version": CACHE_VERSION,
        "key": key,
        "base": str(base.resolve()),
        "size": size,
        "shapes": {file: list(shape) for file, shape in layout.items()},
        "bytes": {file: (folder / file).stat().st_size for file in layout},
        "sha256": {file: hasher.hexdigest() for file, hasher in hashers.items()},
        "seconds": round(time.perf_counter() - start, 3),
        "names": names,
    }
    with atomic_open(folder / MANIFEST, "w") as f:  # last: its presence says the arrays are whole
        json.dump(manifest, f, separators=(",", ":"))
    return manifest


def prune(root: Path, keep: Path, prefix: str) -> None:
    """Delete caches superseded by `keep` (same label and size, older files or another list)."""
    for other in root.glob(f"{prefix}*"):
        if other != keep and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)  # open maps stay valid until closed


def ensure_cache(
    base: Path, names: Sequence[str], size: int, label: str, workers: int | None = None
) -> DecodedArrays | None:
    """Decoded arrays of `names` at size x size, built first unless a valid cache exists.

    None, with a warning, when the cache cannot be written (read-only, no space): the caller then
    reads the JPEGs. A sample that fails to decode raises DataError, naming its file.
    """
    base = Path(base)
    ordered = sorted(set(names))
    key = cache_key(base, ordered, size)
    root = cache_root(base)
    prefix = f"{label}-{size}px-"
    folder = root / f"{prefix}{key}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with locked(root / ".lock"):
            if not is_valid(folder, key, ordered, size):
                manifest = build(base, folder, key, ordered, size, workers)
                megabytes = sum(manifest["bytes"].values()) / 2**20
                log.info(
                    "Decoded cache %s: %d samples at %dx%d px in %.1f s, %.1f MiB",
                    folder,
                    len(ordered),
                    size,
                    size,
                    manifest["seconds"],
                    megabytes,
                )
                prune(root, folder, prefix)
    except OSError as e:
        warnings.warn(
            f"data.cache=true: cannot write the decoded cache in {root} ({e}); reading the JPEGs "
            "instead (slower). Free disk space, set XDG_CACHE_HOME to a writable folder, or set "
            "data.cache=false",
            stacklevel=2,
        )
        return None
    row = {name: i for i, name in enumerate(ordered)}
    return DecodedArrays(folder, names, [row[name] for name in names])
