"""albumentations pipelines: resize to the model's size, then the configured augmentations."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np


def resize(image_size: int) -> A.Resize:
    """Images: area (down) or linear interpolation; masks: always nearest, so labels stay labels."""
    return A.Resize(
        image_size,
        image_size,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
    )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """An image at size x size through the pipeline's resize (so that resize is then a no-op)."""
    return resize(size)(image=image)["image"]


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Labels at size x size by nearest neighbour, the interpolation the pipeline uses for masks."""
    return cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)


def train_pipeline(image_size: int, augment: Sequence[A.BasicTransform] = ()) -> A.Compose:
    """Resize first so every augmentation runs on the small image (cheaper)."""
    return A.Compose([resize(image_size), *augment])


def eval_pipeline(image_size: int) -> A.Compose:
    return A.Compose([resize(image_size)])
