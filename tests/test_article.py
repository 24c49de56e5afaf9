"""The article's protocol: its per-batch test figures, NEAREST image resize, no validation split."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from petseg.data.datamodule import PetDataModule
from petseg.data.oxford import read_split
from petseg.data.transforms import resize
from petseg.errors import ConfigError
from petseg.module import SegModule

BACKGROUND = 1  # the article's TrimapClasses.BACKGROUND


def article_iou_metric(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The article's IoUMetric(softmax probabilities (B, 3, H, W), labels (B, 1, H, W))."""
    gt = torch.cat([(gt == i) for i in range(3)], dim=1)
    intersection = gt * pred
    union = gt + pred - intersection
    iou = (intersection.sum(dim=(1, 2, 3)) + 0.001) / (union.sum(dim=(1, 2, 3)) + 0.001)
    return iou.mean()


def article_test_loop(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """The notebooks' test_dataset_accuracy: mean over batches of each batch's three figures."""
    iou = MulticlassJaccardIndex(3, average="micro", ignore_index=BACKGROUND)
    pixel_metric = MulticlassAccuracy(3, average="micro")
    pixel, ious, custom = [], [], []
    with torch.no_grad():
        for batch in loader:
            inputs, targets = batch["image"], batch["mask"].unsqueeze(1)  # (B, 1, H, W)
            pred = nn.Softmax(dim=1)(model(inputs))
            pred_labels = pred.argmax(dim=1).unsqueeze(1)
            ious.append(iou(pred_labels, targets).item())
            pixel.append(pixel_metric(pred_labels, targets).item())
            custom.append(article_iou_metric(pred, targets).item())
    return {
        "article_pixel_acc": float(np.mean(pixel)),
        "article_iou_acc": float(np.mean(ious)),
        "article_custom_iou": float(np.mean(custom)),
    }


class Blobs(Dataset):
    """Random images with labels correlated to them, so a 1x1 conv scores well above chance."""

    def __init__(self, count: int, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, size, size, generator=g)
        noise = torch.randint(0, 3, (count, size, size), generator=g)
        self.masks = torch.where(
            torch.rand(count, size, size, generator=g) < 0.6, self.images.argmax(1), noise
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


def test_article_protocol_logs_the_articles_three_figures(tmp_path: Path) -> None:
    """test/article_* equal the notebooks' own loop on the same batches (50 images in batches of
    21: the last batch of 8 weighs as much as a full one, as in the article)."""
    torch.manual_seed(0)
    module = SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "petseg.losses.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
        article_protocol=True,
    )
    with torch.no_grad():  # logits = 4 * image: the argmax channel is the label 60% of the time
        module.net.weight.copy_(4 * torch.eye(3).view(3, 3, 1, 1))
        module.net.bias.zero_()
    loader = DataLoader(Blobs(50), batch_size=21)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    logged = {k: float(v) for k, v in trainer.test(module, dataloaders=loader)[0].items()}
    expected = article_test_loop(module.eval(), loader)
    for name, value in expected.items():
        assert logged[f"test/{name}"] == pytest.approx(value, abs=1e-5), name
    assert 0.5 < logged["test/article_pixel_acc"] < 0.95
    # Per-batch means, not per-image: the image-weighted soft IoU (test/soft_iou) differs.
    assert logged["test/article_custom_iou"] != pytest.approx(logged["test/soft_iou"], abs=1e-6)


def test_article_protocol_off_logs_no_article_figures(tmp_path: Path) -> None:
    module = SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "petseg.losses.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    logged = trainer.test(module, dataloaders=DataLoader(Blobs(4), batch_size=2))[0]
    assert "test/miou" in logged and not any("article" in k for k in logged)


def test_nearest_image_resize_equals_the_articles_torchvision_resize() -> None:
    """data.image_interpolation=nearest: T.Resize((S, S), NEAREST) on the image tensor, exactly."""
    rng = np.random.default_rng(0)
    for h, w in [(375, 500), (500, 333), (97, 131)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
        out = resize(128, "nearest")(image=image, mask=mask)
        nearest = T.Resize((128, 128), interpolation=T.InterpolationMode.NEAREST)
        ref = nearest(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        ref_mask = nearest(torch.from_numpy(mask)[None])[0].numpy()
        np.testing.assert_array_equal(out["image"], ref)
        np.testing.assert_array_equal(out["mask"], ref_mask)
        area = resize(128)(image=image)["image"]
        assert (area != ref).any()  # the default (area) is another resize


def test_no_validation_split_trains_on_all_of_trainval(tiny_pets: Path) -> None:
    """val_fraction=0: train = every trainval image, val = the test list at eval_batch_size,
    shuffled when eval_shuffle; images read at full size and resized by nearest."""
    dm = PetDataModule(
        root=tiny_pets,
        download=False,
        image_size=32,
        batch_size=4,
        num_workers=0,
        val_fraction=0,
        eval_batch_size=3,
        eval_shuffle=True,
        image_interpolation="nearest",
        cache=False,
    )
    dm.setup("fit")
    base = tiny_pets / "oxford-iiit-pet"
    assert sorted(dm.train_set.names) == sorted(read_split(base, "trainval"))
    assert sorted(dm.val_set.names) == sorted(read_split(base, "test"))
    loader = dm.val_dataloader()
    assert loader.batch_size == 3 and not loader.drop_last
    assert [len(b["mask"]) for b in loader] == [3, 1]
    order = [i for i, _ in loader.sampler]
    assert sorted(order) == list(range(4))
    assert dm.train_dataloader().batch_size == 4 and dm.train_dataloader().drop_last
    dm.drop_last = False  # data.drop_last=false: the last, partial batch trains too
    assert [len(b["mask"]) for b in dm.train_dataloader()] == [4, 4, 2]
    assert dm.train_set[0]["image"].shape == (3, 32, 32)
    assert dm.train_set.size is None  # full-size read; the pipeline's nearest resize does it


def test_nearest_resize_needs_the_cache_off(tiny_pets: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.cache=false"):
        PetDataModule(root=tiny_pets, image_interpolation="nearest", cache=True)
    with pytest.raises(ConfigError, match=r"data\.image_interpolation"):
        PetDataModule(root=tiny_pets, image_interpolation="bicubic")
