"""albumentations pipelines: resize to the model's size, then the configured augmentations."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

# data.image_interpolation: "area" = area down / linear up (petseg's default); "nearest" = the
# article's T.Resize(..., NEAREST) on image tensors (F.interpolate "nearest": cv2.INTER_NEAREST).
IMAGE_INTERPOLATIONS = ("area", "nearest")


def resize(image_size: int, interpolation: str = "area") -> A.Resize:
    """Images: area (down) or linear, or nearest; masks: always nearest, so labels stay labels."""
    nearest = interpolation == "nearest"
    return A.Resize(
        image_size,
        image_size,
        interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale=None if nearest else "image",
    )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """An image at size x size through the pipeline's resize (so that resize is then a no-op)."""
    return resize(size)(image=image)["image"]


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Labels at size x size by nearest neighbour, the interpolation the pipeline uses for masks."""
    return cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)


def train_pipeline(
    image_size: int, augment: Sequence[A.BasicTransform] = (), interpolation: str = "area"
) -> A.Compose:
    """Resize first so every augmentation runs on the small image (cheaper)."""
    return A.Compose([resize(image_size, interpolation), *augment])


def eval_pipeline(image_size: int, interpolation: str = "area") -> A.Compose:
    return A.Compose([resize(image_size, interpolation)])
