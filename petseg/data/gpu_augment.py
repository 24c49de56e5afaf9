"""Horizontal flips and colour jitter on a whole batch, on its device (`data.gpu_augment=true`).

With the decoded cache, a DataLoader worker's remaining work is mostly albumentations' ColorJitter;
on a machine with few cores per GPU this moves it, and the flip, to the GPU after the transfer.
PetDataModule.on_after_batch_transfer applies it (Lightning calls a DataModule's hook when the
LightningModule defines none). The configured albumentations HorizontalFlip and ColorJitter give
the probabilities and ranges and leave the CPU pipeline; other transforms stay there.

Differences from albumentations: the four colour steps run in one fixed order (brightness,
contrast, saturation, hue; albumentations shuffles it per image) on float images, torchvision's
formulas. Each image draws its own flip, jitter and factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import torch

Range = tuple[float, float]


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma (ITU-R 601, as torchvision and OpenCV)."""
    r, g, b = image.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (torchvision's formulas, batched)."""
    r, g, b = image.unbind(1)
    maxc, minc = image.amax(1), image.amin(1)
    flat = maxc == minc
    ones = torch.ones_like(maxc)
    chroma = maxc - minc
    s = chroma / torch.where(flat, ones, maxc)
    divisor = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = image.unbind(1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.to(torch.int64) % 6  # (B, H, W)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    table = torch.stack(  # (B, 3, 6, H, W): each channel's value in each of the six sectors
        (
            torch.stack((v, q, p, p, t, v), dim=1),
            torch.stack((t, v, v, q, p, p), dim=1),
            torch.stack((p, p, t, v, v, q), dim=1),
        ),
        dim=1,
    )
    index = sector[:, None, None].expand(-1, 3, 1, -1, -1)  # (B, 3, 1, H, W)
    return table.gather(2, index).squeeze(2)


def blend(image: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * image + (1 - factor) * other, clamped to [0, 1]; factor (B,) per image."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


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
            u = torch.rand(size, device=device, generator=generator)
            return low + (high - low) * u

        flip = uniform(0.0, 1.0) < self.flip_p
        image = torch.where(flip.view(-1, 1, 1, 1), image.flip(-1), image)
        mask = torch.where(flip.view(-1, 1, 1), mask.flip(-1), mask)
        jitter = uniform(0.0, 1.0) < self.jitter_p
        factors = [uniform(*r) for r in (self.brightness, self.contrast, self.saturation, self.hue)]
        if jitter.any():
            brightness, contrast, saturation, hue = factors
            out = (image * brightness.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
            out = blend(out, grayscale(out).mean((1, 2, 3), keepdim=True), contrast)
            out = blend(out, grayscale(out), saturation)
            if self.hue != (0.0, 0.0):
                hsv = rgb_to_hsv(out)
                h = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
                out = hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))
            image = torch.where(jitter.view(-1, 1, 1, 1), out, image)
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
