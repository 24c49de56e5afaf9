"""Segmentation losses: pure functional cores plus thin `nn.Module` wrappers that Hydra builds.

Every loss maps logits (B, C, H, W) and an int64 mask (B, H, W) to a scalar, skips pixels whose
target is `ignore_index`, and computes in float32 whatever the autocast dtype, so bf16/fp16
training, batches missing a class and batches with every pixel ignored give finite values and
gradients. Region losses (Dice, IoU, Tversky) sum their soft counts over the whole batch (B, H, W)
per class, then average over classes.
"""

from petseg.losses.functional import (
    class_weights_from_counts,
    cross_entropy,
    dice_loss,
    focal_loss,
    iou_loss,
    soft_iou,
    tversky_loss,
)
from petseg.losses.modules import (
    ComboLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    SoftIoULoss,
    TverskyLoss,
    WeightedCrossEntropyLoss,
)

__all__ = [
    "ComboLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "SoftIoULoss",
    "TverskyLoss",
    "WeightedCrossEntropyLoss",
    "class_weights_from_counts",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "iou_loss",
    "soft_iou",
    "tversky_loss",
]
