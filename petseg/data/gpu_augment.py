"""Horizontal flips and colour jitter on a whole batch, on its device (`data.gpu_augment=true`).

With the decoded cache, a DataLoader worker's remaining work is mostly albumentations' ColorJitter;
this moves it, and the flip, to the GPU after the transfer (PetDataModule.on_after_batch_transfer).
The configured albumentations HorizontalFlip and ColorJitter give the probabilities and ranges and
leave the CPU pipeline. Unlike albumentations, the colour steps run in one fixed order (brightness,
contrast, saturation, hue: torchvision's ops on float images). Each image draws its own factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import torch
from torchvision.transforms.v2 import functional as F

Range = tuple[float, float]


@dataclass(frozen=True)
class FlipJitter:
    """Per image: a horizontal flip with `flip_p`, and with `jitter_p` colour factors drawn
    uniformly from the ranges (albumentations' ColorJitter ranges: factors around 1, hue shift
    in fractions of a turn)."""

    flip_p: float = 0.0
    jitter_p: float = 0.0
    brightness: Range = (1.0, 1.0)
    contrast: Range = (1.0, 1.0)
    saturation: Range = (1.0, 1.0)
    hue: Range = (0.0, 0.0)

    def __call__(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        image, mask = batch["image"], batch["mask"]  # (B, 3, H, W) float in [0, 1], (B, H, W)
        size, device = image.shape[0], image.device

        def uniform(low: float, high: float) -> torch.Tensor:  # (B,)
            return low + (high - low) * torch.rand(size, device=device, generator=generator)

        flip = uniform(0.0, 1.0) < self.flip_p
        image = torch.where(flip.view(-1, 1, 1, 1), F.horizontal_flip(image), image)  # a copy
        mask = torch.where(flip.view(-1, 1, 1), F.horizontal_flip(mask), mask)
        jitter = uniform(0.0, 1.0) < self.jitter_p
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        factors = torch.stack([uniform(*r) for r in ranges], dim=1)  # (B, 4)
        # torchvision's adjust_* take one float factor: one call per jittered image (one sync).
        picked = jitter.nonzero().squeeze(1)
        for i, (b, c, s, h) in zip(picked.tolist(), factors[picked].tolist(), strict=True):
            out = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(image[i], b), c), s)
            image[i] = F.adjust_hue(out, h) if self.hue != (0.0, 0.0) else out
        return {**batch, "image": image, "mask": mask}


def split_transforms(
    transforms: Sequence[A.BasicTransform],
) -> tuple[list[A.BasicTransform], FlipJitter]:
    """The transforms that stay on the CPU, and the FlipJitter that replaces the others."""
    cpu, options = [], {}
    for transform in transforms:
        if type(transform) is A.HorizontalFlip and "flip_p" not in options:
            options["flip_p"] = transform.p
        elif type(transform) is A.ColorJitter and "jitter_p" not in options:
            options.update(
                jitter_p=transform.p,
                brightness=tuple(transform.brightness),
                contrast=tuple(transform.contrast),
                saturation=tuple(transform.saturation),
                hue=tuple(transform.hue),
            )
        else:
            cpu.append(transform)
    return cpu, FlipJitter(**options)
