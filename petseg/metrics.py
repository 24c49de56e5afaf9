"""Segmentation scores derived from one dataset-level confusion matrix (rows target, cols pred),
and the article's evaluation protocol (its per-batch figures).

Accumulating the confusion matrix over a whole split and deriving every score from it gives the
dataset-level IoU, not a mean of per-batch IoUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import multiclass_jaccard_index

# The article's soft IoU metric is petseg.losses.soft_iou(..., smooth=0.001, average="image").
SOFT_IOU_SMOOTH = 0.001


def scores_from_confmat(
    confmat: torch.Tensor, class_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """pixel_acc, miou, mdice and iou_<name>/dice_<name>; classes never seen nor predicted are
    left out of the means (their IoU is NaN) rather than counted as 0 or 1."""
    cm = confmat.double()
    tp = cm.diagonal()
    target = cm.sum(1)
    pred = cm.sum(0)
    union = target + pred - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    dice = torch.where(
        present, 2 * tp / (target + pred).clamp_min(1), torch.full_like(tp, float("nan"))
    )
    scores = {
        "pixel_acc": tp.sum() / cm.sum().clamp_min(1),
        "miou": iou[present].mean() if present.any() else torch.tensor(float("nan")),
        "mdice": dice[present].mean() if present.any() else torch.tensor(float("nan")),
    }
    for c, name in enumerate(class_names):
        scores[f"iou_{name}"] = iou[c]
        scores[f"dice_{name}"] = dice[c]
    return {k: v.float() for k, v in scores.items()}


def argmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(1)` for (B, C, H, W) logits, as int64 (B, H, W), with its first-index ties.

    A running max over the class planes, kept over argmax(1), a strided reduction over C that on
    CPU costs a good part of a small network's eval step (README, measured), on every val/test
    and predict batch.
    """
    planes = logits.unbind(1)
    top = planes[0]
    small = len(planes) <= 256
    preds = torch.zeros(top.shape, dtype=torch.uint8 if small else torch.long, device=top.device)
    for c, plane in enumerate(planes[1:], 1):
        preds += (plane > top) * (c - preds)
        top = torch.maximum(top, plane)
    return preds.long()


# --- the article's protocol -----------------------------------------------------------------------


# The article's three test figures, each a mean over test batches of per-batch values. Published:
# pixel accuracy 88.28% (SegNet), 86.96% (SegNet-DSC), 85.89% (ViT); the ViT notebook prints
# "Pixel Accuracy: 0.8589, IoU Accuracy: 0.6853, Custom IoU Accuracy: 0.7347".
ARTICLE_FIGURES = ("article_pixel_acc", "article_iou_acc", "article_custom_iou")


def article_batch_figures(
    preds: torch.Tensor,
    target: torch.Tensor,
    soft_iou: torch.Tensor,
    num_classes: int,
    background_index: int,
) -> dict[str, torch.Tensor]:
    """The article's three figures on one batch (its notebooks' test loop, per batch).

    article_pixel_acc: torchmetrics MulticlassAccuracy(C, average="micro"), the share of pixels
    right; article_iou_acc: MulticlassJaccardIndex(C, average="micro", ignore_index=background);
    article_custom_iou: its soft IoU, per image over classes and pixels (smooth 0.001), mean over
    the batch's images (`soft_iou`, as petseg.losses.soft_iou gives it). preds/target (B, H, W).
    """
    return {
        "article_pixel_acc": (preds == target).float().mean(),
        "article_iou_acc": multiclass_jaccard_index(
            preds, target, num_classes, average="micro", ignore_index=background_index
        ),
        "article_custom_iou": soft_iou.float().mean(),
    }


def article_protocol(cfg: DictConfig) -> bool:
    """`metrics.article_protocol`: evaluate as the article did, to set runs beside its figures.

    Its figures are pixel accuracies, means over test batches of per-batch values, on test images
    through the training augmentations (`data.eval_augment` follows this switch). When on, val
    and test log them as `<stage>/article_*` and `<stage>/article_iou` over the whole split. Off
    (the default): the clean protocol, dataset-level scores, to compare petseg runs by.
    """
    return bool((cfg.get("metrics") or {}).get("article_protocol", False))
