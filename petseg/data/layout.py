"""The official Oxford-IIIT Pet layout, spelled once, and where petseg keeps files beside it.

<root>/oxford-iiit-pet/images/<name>.jpg, annotations/trimaps/<name>.png and the split lists
annotations/<split>.txt. A leaf: it imports nothing from petseg, so every other module may use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# torchvision's OxfordIIITPet downloads into <root>/oxford-iiit-pet; we read the same folder.
BASE_FOLDER = "oxford-iiit-pet"
IMAGES = "images"
ANNOTATIONS = "annotations"
TRIMAPS = f"{ANNOTATIONS}/trimaps"


def find_base(root: str | Path) -> Path | None:
    """The folder holding images/ and annotations/: <root>/oxford-iiit-pet, or root itself."""
    root = Path(root)
    for base in (root / BASE_FOLDER, root):
        if (base / IMAGES).is_dir() and (base / TRIMAPS).is_dir():
            return base
    return None


def no_dataset(root: str | Path) -> str:
    """The start of the error for a root without the dataset: what was expected where."""
    return (
        f"data.root={root}: no Oxford-IIIT Pet dataset there (expected "
        f"{Path(root) / BASE_FOLDER}/{IMAGES} and {TRIMAPS}, or those in data.root itself)"
    )


def split_file(split: str) -> str:
    """The list of a split (`trainval`, `test`), relative to the dataset folder."""
    return f"{ANNOTATIONS}/{split}.txt"


def split_path(base: Path, split: str) -> Path:
    return Path(base) / split_file(split)


def split_names(text: str) -> list[str]:
    """Image names of a split list's text: the first word of each line, `#` lines skipped."""
    words = (line.split() for line in text.splitlines() if not line.strip().startswith("#"))
    return [w[0] for w in words if w]


def sample_files(name: str) -> tuple[str, str]:
    """Image and trimap of a sample, relative to the dataset folder."""
    return f"{IMAGES}/{name}.jpg", f"{TRIMAPS}/{name}.png"


def sample_paths(base: Path, name: str) -> tuple[Path, Path]:
    image, trimap = sample_files(name)
    return Path(base) / image, Path(base) / trimap


def writable(folder: Path) -> bool:
    """Writable and not marked read-only: root may write anywhere, but shared data has no w bits."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK)
    except OSError:
        return False


def cache_place(base: Path, local: str, elsewhere: str) -> Path:
    """`base/local` when the dataset folder is writable, else `<user cache>/petseg/<elsewhere>`
    with `{key}` filled by a hash of the dataset's path, so datasets never share a cache."""
    if writable(base):
        return base / local
    key = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / elsewhere.format(key=key)


def user_cache_dir() -> Path:
    """petseg's folder in the user cache: $XDG_CACHE_HOME/petseg, else ~/.cache/petseg."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "petseg"
