"""Pet-like synthetic data written in the official layout, so the real reader serves it.

Each image holds one blob (an ellipse with two ear triangles) in a random colour and texture on a
noisy background; its trimap marks the blob 1, the background 2 and a band on the outline 3, as the
Oxford-IIIT Pet annotators did. Made once per parameter set, offline and deterministic.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from petseg.data.layout import BASE_FOLDER, IMAGES, TRIMAPS, sample_paths, split_path

STAMP = "synthetic.json"


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image (S, S, 3), raw trimap uint8 (S, S) in {1, 2, 3})."""
    inside = np.zeros((size, size), np.uint8)
    center = rng.uniform(0.35, 0.65, 2) * size
    axes = rng.uniform(0.2, 0.33, 2) * size
    angle = rng.uniform(0, 180)
    cv2.ellipse(inside, (center, 2 * axes, angle), 1, thickness=-1)
    for side in (-1, 1):  # ears: triangles on top of the head
        tip = center + np.array([side * axes[0] * 0.6, -axes[1] * 1.25])
        base_l = center + np.array([side * axes[0] * 0.2, -axes[1] * 0.6])
        base_r = center + np.array([side * axes[0] * 0.9, -axes[1] * 0.3])
        cv2.fillPoly(inside, [np.stack([tip, base_l, base_r]).astype(np.int32)], 1)
    band = max(1, size // 64)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    border = cv2.dilate(inside, kernel) - cv2.erode(inside, kernel)

    trimap = np.full((size, size), 2, np.uint8)
    trimap[inside == 1] = 1
    trimap[border == 1] = 3

    background = rng.uniform(40, 215, 3) + rng.normal(0, 25, (size, size, 3))
    fur = rng.uniform(0, 255, 3)
    stripes = np.sin(np.arange(size) / rng.uniform(2, 6))[None, :, None] * rng.uniform(0, 40)
    pet = fur + stripes + rng.normal(0, 12, (size, size, 3))
    image = np.where(inside[..., None] == 1, pet, background)
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), 0)
    return image, trimap


def write_dataset(out: Path, num_trainval: int, num_test: int, size: int, seed: int) -> None:
    """images/, annotations/trimaps/ and the trainval/test lists in the official layout."""
    rng = np.random.default_rng(seed)
    (out / IMAGES).mkdir(parents=True)
    (out / TRIMAPS).mkdir(parents=True)
    lines = {"trainval": [], "test": []}
    for i in range(num_trainval + num_test):
        split = "trainval" if i < num_trainval else "test"
        name = f"synthetic_{i + 1}"
        image, trimap = make_sample(rng, size)
        image_path, trimap_path = sample_paths(out, name)
        Image.fromarray(image).save(image_path, quality=90)
        Image.fromarray(trimap, mode="L").save(trimap_path)
        lines[split].append(f"{name} 1 1 1")
    for split, rows in lines.items():
        split_path(out, split).write_text("\n".join(rows) + "\n")


def ensure_synthetic(
    root: str | Path, num_trainval: int = 96, num_test: int = 32, size: int = 96, seed: int = 0
) -> Path:
    """<root>/oxford-iiit-pet with these parameters, generated once (atomically) and reused."""
    root = Path(root)
    base = root / BASE_FOLDER
    params = {"num_trainval": num_trainval, "num_test": num_test, "size": size, "seed": seed}
    stamp = base / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return base
    if base.exists() and not stamp.is_file():
        raise FileExistsError(f"{base} exists and was not made by petseg's synthetic generator")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root))
    try:
        write_dataset(tmp / BASE_FOLDER, num_trainval, num_test, size, seed)
        (tmp / BASE_FOLDER / STAMP).write_text(json.dumps(params))
        if base.exists():  # ours, made with other parameters
            shutil.rmtree(base)
        (tmp / BASE_FOLDER).rename(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base
