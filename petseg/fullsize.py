"""Test metrics at each image's original resolution, the standard protocol of segmentation
toolkits: the network sees the image as in training (resized to `data.image_size`), its logits
are resized bilinearly to the full-size trimap, and the trimap's labels are used untouched.

Why: at the training resolution the trimaps are shrunk with nearest, which drops thin structures
(the border class most) and gives every image the same number of pixels whatever its size. Sizes
differ, so logits are resized one image at a time (memory stays one full-size image's logits).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from petseg.confusion import report_confusion
from petseg.data.oxford import PetTrimaps, load_trimap
from petseg.losses import soft_iou
from petseg.metrics import SOFT_IOU_SMOOTH, argmax_classes, scores_from_confmat
from petseg.module import SegModule

CONFUSION_NAME = "test_original"  # <run dir>/confusion/test_original.png|.csv


class FullSizeLabels(Dataset):
    """A split's samples as the network saw them in training, each with its full-size labels."""

    def __init__(self, dataset: PetTrimaps) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        _, trimap = self.dataset.paths(index)
        return {
            "image": self.dataset[index]["image"],  # (3, S, S), the eval pipeline's input
            # (H, W) at full size, mapped as data.labels / data.border map the training labels
            "labels": self.dataset.to_labels(torch.from_numpy(load_trimap(trimap)).long()),
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked (one size); labels a list (each image's own size)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": [s["labels"] for s in samples],
    }


def full_size_loader(
    dataset: PetTrimaps, batch_size: int, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """Batches of FullSizeLabels in order (a bad file stops the run: scores need every sample)."""
    return DataLoader(
        FullSizeLabels(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=collate,
    )


class FullSizeScorer(L.LightningModule):
    """`trainer.test` on a full_size_loader: the `test/*` scores of SegModule, at full size.

    Same names and definitions as the training-resolution scores (dataset-level confusion
    matrix; soft_iou a mean over images), except `test/loss`: the mean over images of each
    image's loss at its own size. The confusion matrix goes to `<root>/confusion/test_original.*`.
    """

    def __init__(self, module: SegModule) -> None:
        super().__init__()
        self.module = module
        self.class_names = list(module.class_names)
        self.ignore_index = module.hparams.ignore_index
        self.confmat = MulticlassConfusionMatrix(
            len(self.class_names), ignore_index=self.ignore_index, validate_args=False
        )
        self.soft_iou = MeanMetric()
        self.loss = MeanMetric()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.module(batch["image"])  # (B, C, S, S)
        with torch.autocast(logits.device.type, enabled=False):  # resize and score in fp32
            for i, labels in enumerate(batch["labels"]):
                full = F.interpolate(
                    logits[i : i + 1].float(), labels.shape, mode="bilinear", align_corners=False
                )  # (1, C, H, W)
                target = labels.unsqueeze(0)  # (1, H, W)
                self.confmat.update(argmax_classes(full), target)
                self.soft_iou.update(
                    soft_iou(
                        full,
                        target,
                        smooth=SOFT_IOU_SMOOTH,
                        ignore_index=self.ignore_index,
                        average="image",
                    )
                )
                self.loss.update(self.module.criterion(full, target).detach().float().reshape(1))

    def on_test_epoch_end(self) -> None:
        cm = self.confmat.compute()
        scores = scores_from_confmat(cm, self.class_names)
        scores["soft_iou"] = self.soft_iou.compute()
        scores["loss"] = self.loss.compute()
        self.log_dict({f"test/{k}": v for k, v in scores.items()})
        report_confusion(self.trainer, cm, self.class_names, CONFUSION_NAME)
