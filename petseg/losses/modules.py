"""Loss modules: thin `nn.Module` wrappers over the functional core, the classes yaml files name."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from petseg.losses.functional import (
    _check_smooth,
    _per_class,
    _require,
    cross_entropy,
    dice_loss,
    focal_loss,
    iou_loss,
    tversky_loss,
)

# --- modules: what the yaml files name; constructor kwargs equal the yaml keys --------------------


class CrossEntropyLoss(nn.Module):
    """Pixel cross-entropy; unlike torch.nn.CrossEntropyLoss, 0 rather than NaN if all ignored."""

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0) -> None:
        super().__init__()
        _require(0 <= label_smoothing <= 1, "label_smoothing", "in [0, 1]", label_smoothing)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            logits, target, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with per-class weights (e.g. from class_weights_from_counts) for imbalance.

    The weight is a non-persistent buffer: it follows the module to the GPU but stays out of
    checkpoints, which rebuild it from the loss config.
    """

    def __init__(
        self,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _require(0 <= label_smoothing <= 1, "label_smoothing", "in [0, 1]", label_smoothing)
        self.register_buffer("weight", _per_class(weight, "weight"), persistent=False)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


class FocalLoss(nn.Module):
    """Focal loss; `alpha` a per-class list (buffer), or a float that scales every class alike."""

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | float | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _require(math.isfinite(gamma) and gamma >= 0, "gamma", ">= 0", gamma)
        _require(
            reduction in ("mean", "sum", "none"), "reduction", "'mean', 'sum' or 'none'", reduction
        )
        if isinstance(alpha, int | float):
            _require(math.isfinite(alpha) and alpha >= 0, "alpha", "finite and >= 0", alpha)
            self.alpha_scale: float | None = float(alpha)
            alpha = None
        else:
            self.alpha_scale = None
        self.register_buffer("alpha", _per_class(alpha, "alpha"), persistent=False)
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        alpha = self.alpha if self.alpha is not None else self.alpha_scale
        return focal_loss(
            logits,
            target,
            gamma=self.gamma,
            alpha=alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class DiceLoss(nn.Module):
    """Soft multi-class Dice loss: optimises overlap directly, so small classes count as much."""

    def __init__(
        self, smooth: float = 1.0, ignore_index: int = -100, classes: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        _check_smooth(smooth)
        if classes is not None:
            classes = [int(c) for c in classes]
            _require(
                len(classes) > 0 and len(set(classes)) == len(classes) and min(classes) >= 0,
                "classes",
                "null or a non-empty list of distinct class indices >= 0",
                classes,
            )
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.classes = classes

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(
            logits,
            target,
            smooth=self.smooth,
            ignore_index=self.ignore_index,
            classes=self.classes,
        )


class SoftIoULoss(nn.Module):
    """Soft IoU (Jaccard) loss, 1 - M or -log M: trains on the quantity mIoU reports.

    By default M is petseg's soft IoU: per class over the batch, smooth 1, mean over classes
    (`soft_iou(average="class")`). The article's IoU loss is `form="neg_log", average="image",
    smooth=0.001` (`loss=iou_article`): -log of its soft IoU, per image pooled over classes and
    pixels, mean over images. `loss=iou_neglog` is -log of petseg's M, not the article's.
    """

    def __init__(
        self,
        form: str = "one_minus",
        smooth: float = 1.0,
        ignore_index: int = -100,
        average: str = "class",
    ) -> None:
        super().__init__()
        _require(form in ("one_minus", "neg_log"), "form", "'one_minus' or 'neg_log'", form)
        _require(average in ("class", "image"), "average", "'class' or 'image'", average)
        _check_smooth(smooth)
        self.form = form
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.average = average

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return iou_loss(
            logits,
            target,
            form=self.form,
            smooth=self.smooth,
            ignore_index=self.ignore_index,
            average=self.average,
        )


class TverskyLoss(nn.Module):
    """Tversky loss: Dice with its own FP/FN weights; beta > alpha favours recall (the border)."""

    def __init__(
        self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, ignore_index: int = -100
    ) -> None:
        super().__init__()
        _require(math.isfinite(alpha) and alpha >= 0, "alpha", "finite and >= 0", alpha)
        _require(math.isfinite(beta) and beta >= 0, "beta", "finite and >= 0", beta)
        _check_smooth(smooth)
        self.alpha = alpha
        self.beta = beta
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return tversky_loss(
            logits,
            target,
            alpha=self.alpha,
            beta=self.beta,
            smooth=self.smooth,
            ignore_index=self.ignore_index,
        )


class ComboLoss(nn.Module):
    """Weighted sum of named loss terms (e.g. CE for per-pixel calibration + Dice for overlap).

    Missing weights default to 1.0. After each call `last_terms` holds every term's detached
    value, for the training module to log.
    """

    def __init__(
        self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        losses = dict(losses)
        weights = dict(weights or {})
        _require(len(losses) > 0, "losses", "a non-empty mapping of name -> loss", losses)
        for name, term in losses.items():
            _require(
                isinstance(term, nn.Module),
                f"losses.{name}",
                "a loss module (a `_target_` dict, instantiated recursively)",
                type(term).__name__,
            )
        unknown = sorted(set(weights) - set(losses))
        _require(not unknown, "weights", f"keyed by names in loss.losses {sorted(losses)}", unknown)
        self.losses = nn.ModuleDict(losses)
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}
        for name, w in self.weights.items():
            _require(math.isfinite(w) and w >= 0, f"weights.{name}", "finite and >= 0", w)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        terms = {name: term(logits, target) for name, term in self.losses.items()}
        self.last_terms = {name: value.detach() for name, value in terms.items()}
        return torch.stack([self.weights[name] * value for name, value in terms.items()]).sum()
