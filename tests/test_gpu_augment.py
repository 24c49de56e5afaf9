"""data.gpu_augment: FlipJitter on batches, as PetDataModule.on_after_batch_transfer applies it."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.transforms.v2 import functional as F

from petseg.data.gpu_augment import FlipJitter, split_transforms


def smooth_batch(size: int = 8) -> dict[str, torch.Tensor]:
    image = torch.rand(size, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    image = torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear")
    mask = torch.randint(0, 3, (size, 32, 32), generator=torch.Generator().manual_seed(1))
    return {"image": image, "mask": mask}


@pytest.mark.parametrize(
    ("option", "factor"),
    [("brightness", 1.2), ("contrast", 0.8), ("saturation", 1.2), ("hue", 0.05), ("hue", -0.05)],
)
def test_gpu_jitter_matches_albumentations(option: str, factor: float) -> None:
    batch = smooth_batch(2)
    factors = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, option: factor}
    out = FlipJitter(jitter_p=1.0, **{k: (v, v) for k, v in factors.items()})(batch)
    assert torch.equal(out["mask"], batch["mask"])  # jitter leaves masks alone
    for image, got in zip(batch["image"], out["image"], strict=True):
        uint8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref = A.ColorJitter().apply(uint8, order=[0, 1, 2, 3], **factors) / 255
        diff = np.abs(got.permute(1, 2, 0).numpy() - ref)
        # OpenCV's uint8 HSV (hue in 2-degree steps) rounds more than the float version
        assert diff.mean() < 1 / 255 and diff.max() < (5 if option == "hue" else 2) / 255


def test_gpu_jitter_is_torchvision_with_each_images_own_factors() -> None:
    """Each jittered image equals torchvision's four ops with its own factors, drawn from the
    generator in a fixed order (flip, jitter, then one per range, each a (B,) draw)."""
    batch = smooth_batch(16)
    ranges = [(0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.1, 0.1)]
    out = FlipJitter(0.0, 0.5, *ranges)(batch, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    _, jitter, *draws = (torch.rand(16, generator=generator) for _ in range(6))
    pairs = zip(ranges, draws, strict=True)
    factors = torch.stack([low + (high - low) * u for (low, high), u in pairs], dim=1)
    assert 0 < (jitter < 0.5).sum() < 16  # some jittered, some not
    for i, (image, got) in enumerate(zip(batch["image"], out["image"], strict=True)):
        want = image
        if jitter[i] < 0.5:
            b, c, s, h = factors[i].tolist()
            want = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(image, b), c), s)
            want = F.adjust_hue(want, h)
        assert torch.equal(got, want), i
    assert torch.equal(out["mask"], batch["mask"])


def test_gpu_flip_jitter_per_image_and_seeded() -> None:
    batch = smooth_batch(64)
    assert torch.equal(FlipJitter()(batch)["image"], batch["image"])  # p = 0: unchanged
    flip = FlipJitter(flip_p=1.0)(batch)
    assert torch.equal(flip["image"], batch["image"].flip(-1))
    assert torch.equal(flip["mask"], batch["mask"].flip(-1))  # the mask flips with its image
    augment = FlipJitter(0.5, 0.5, (0.8, 1.2), (0.8, 1.2), (0.8, 1.2), (-0.05, 0.05))
    out = augment(batch, torch.Generator().manual_seed(3))
    again = augment(batch, torch.Generator().manual_seed(3))
    assert torch.equal(out["image"], again["image"]) and torch.equal(out["mask"], again["mask"])
    flipped = (out["mask"] != batch["mask"]).flatten(1).any(1)
    assert torch.equal(out["mask"][flipped], batch["mask"][flipped].flip(-1))
    assert torch.equal(out["mask"][~flipped], batch["mask"][~flipped])
    changed = (out["image"] != batch["image"].flip(-1)).flatten(1).any(1) & flipped
    changed |= (out["image"] != batch["image"]).flatten(1).any(1) & ~flipped
    assert 16 < flipped.sum() < 48 and 16 < changed.sum() < 48  # drawn per image
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert torch.equal(batch["image"], smooth_batch(64)["image"])  # the input is not modified


def test_split_transforms_moves_flip_and_jitter_only() -> None:
    crop = A.RandomCrop(16, 16)
    cpu, augment = split_transforms(
        [A.HorizontalFlip(p=0.3), crop, A.ColorJitter(0.2, 0.1, 0.3, 0.05, p=0.7)]
    )
    assert cpu == [crop]
    assert augment == FlipJitter(0.3, 0.7, (0.8, 1.2), (0.9, 1.1), (0.7, 1.3), (-0.05, 0.05))


def test_gpu_augment_runs_in_training_only(cfg_factory, monkeypatch) -> None:
    from petseg.train import train

    from conftest import TINY

    calls: list[FlipJitter] = []
    call = FlipJitter.__call__

    def spy(self, batch, generator=None):
        calls.append(self)
        return call(self, batch, generator)

    monkeypatch.setattr(FlipJitter, "__call__", spy)
    cfg = cfg_factory(
        *TINY, "data.gpu_augment=true", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"
    )
    dm = instantiate(cfg.data)
    assert dm.train_transforms == [] and dm.device_augment.flip_p == 0.5
    assert dm.device_augment.hue == (-0.05, 0.05)
    metrics = train(cfg)
    assert "test/miou" in metrics
    assert len(calls) == 7 // 2  # the training batches (7 train samples, batch 2), no eval ones
