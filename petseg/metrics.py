"""Segmentation scores derived from one dataset-level confusion matrix (rows target, cols pred).

Accumulating the confusion matrix over a whole split and deriving every score from it gives the
dataset-level IoU (not a mean of per-batch IoUs), and costs one bincount per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def scores_from_confmat(confmat: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor]:
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
