"""Segmentation losses: pure functional cores plus thin `nn.Module` wrappers that Hydra builds.

Every loss maps logits (B, C, H, W) and an int64 mask (B, H, W) to a scalar, skips pixels whose
target is `ignore_index`, and computes in float32 whatever the autocast dtype, so bf16/fp16
training, batches missing a class and batches with every pixel ignored give finite values and
gradients. Region losses (Dice, IoU, Tversky) sum their soft counts over the whole batch (B, H, W)
per class, then average over classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Floor for denominators and for 1 - p_t; reached only in degenerate batches.
_EPS = 1e-12


def _require(ok: bool, option: str, rule: str, got: object) -> None:
    """Raise the one error a user sees for a bad option: its name, the rule, the value given."""
    if not ok:
        raise ValueError(f"loss.{option} must be {rule}, got {got!r}")


def _check_inputs(logits: Tensor, target: Tensor) -> None:
    """Fail with shapes named, instead of a broadcast or scatter error deep inside a loss."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"loss expects logits (B, C, H, W) and target (B, H, W), got logits "
            f"{tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if target.dtype != torch.long:
        raise ValueError(f"loss expects an int64 target (class indices), got {target.dtype}")


def _per_class(values: Sequence[float] | Tensor | None, option: str) -> Tensor | None:
    """A per-class list from the config as a float32 tensor, checked finite and >= 0."""
    if values is None:
        return None
    if isinstance(values, str):
        raise ValueError(
            f"loss.{option} is {values!r}: replace it with a list of per-class floats before "
            f"instantiating (for `auto`, class_weights_from_counts(counts).tolist())"
        )
    t = torch.as_tensor(list(values) if not isinstance(values, Tensor) else values).float()
    _require(t.ndim == 1 and t.numel() > 0, option, "a non-empty list of floats", values)
    _require(bool(torch.isfinite(t).all() and (t >= 0).all()), option, "finite and >= 0", values)
    return t


def _check_num_classes(values: Tensor | None, logits: Tensor, option: str) -> None:
    """A per-class list must have one entry per logit channel."""
    if values is not None and values.numel() != logits.shape[1]:
        raise ValueError(
            f"loss.{option} has {values.numel()} entries but the logits have "
            f"{logits.shape[1]} classes; give one entry per class"
        )


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 / 0 = 1 (nothing predicted, nothing to find), so all-ignored costs 0."""
    return torch.where(den > 0, num / den.clamp_min(_EPS), 1.0)


def _check_smooth(smooth: float) -> None:
    _require(math.isfinite(smooth) and smooth >= 0, "smooth", "finite and >= 0", smooth)


def _soft_counts(
    logits: Tensor, target: Tensor, ignore_index: int, dims: tuple[int, ...] = (0, 2, 3)
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives sum(p*g), predicted mass sum(p) and target mass sum(g) over `dims`."""
    _check_inputs(logits, target)
    probs = logits.float().softmax(dim=1)  # (B, C, H, W), float32 even under autocast
    valid = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    index = torch.where(valid, target.unsqueeze(1), 0)  # ignored pixels point at class 0 ...
    onehot = torch.zeros_like(probs).scatter_(1, index, 1.0) * valid  # ... and are zeroed here
    probs = probs * valid
    return (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)


# --- functional cores ---------------------------------------------------------------------------


def class_weights_from_counts(
    counts: Tensor | Sequence[float], scheme: str = "inverse_sqrt"
) -> Tensor:
    """Per-class CE weights from training-set pixel counts, so rare classes (border) weigh more.

    Weights of present classes average to 1 (the loss keeps the scale of plain CE); a class with
    count 0 gets weight 0, since it has no pixels to weight and 1/0 would be inf. Schemes, with
    f the pixel frequency: "inverse_sqrt" 1/sqrt(f), "inverse" 1/f, "median" median(f)/f (Eigen &
    Fergus 2015), which after the mean-1 normalisation equals "inverse".
    """
    if scheme not in ("inverse_sqrt", "inverse", "median"):
        raise ValueError(f"scheme must be 'inverse_sqrt', 'inverse' or 'median', got {scheme!r}")
    c = torch.as_tensor(counts).double()
    if c.ndim != 1 or c.numel() == 0 or not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError(f"counts must be a 1-D tensor of finite counts >= 0, got {counts!r}")
    present = c > 0
    if not present.any():
        raise ValueError("counts are all 0: no labelled pixels to derive class weights from")
    freq = c / c.sum()
    inv = torch.where(present, 1 / freq.clamp_min(_EPS), 0.0)
    if scheme == "inverse_sqrt":
        w = inv.sqrt()
    elif scheme == "inverse":
        w = inv
    else:
        w = freq[present].median() * inv
    return (w / w[present].mean()).float()


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """torch's mean pixel cross-entropy, except it is 0 (not NaN) when every pixel is ignored."""
    _check_inputs(logits, target)
    _check_num_classes(weight, logits, "weight")
    weight = None if weight is None else weight.float()
    per_pixel = F.cross_entropy(
        logits.float(),
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="none",
    )  # (B, H, W), 0 at ignored pixels
    valid = target != ignore_index
    if weight is None:
        return per_pixel.sum() / valid.sum().clamp_min(1)
    # torch's weighted mean divides by the summed weights of the valid pixels' targets.
    denom = (weight[torch.where(valid, target, 0)] * valid).sum()
    return per_pixel.sum() / denom.clamp_min(_EPS)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: Tensor | float | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017): easy pixels fade.

    "mean" averages over non-ignored pixels (not over alpha), so gamma=0, alpha=None is exactly
    cross-entropy; "none" returns the (B, H, W) map, 0 at ignored pixels.
    """
    _check_inputs(logits, target)
    _require(math.isfinite(gamma) and gamma >= 0, "gamma", ">= 0", gamma)
    _require(
        reduction in ("mean", "sum", "none"), "reduction", "'mean', 'sum' or 'none'", reduction
    )
    valid = target != ignore_index
    index = torch.where(valid, target, 0)
    logp_t = logits.float().log_softmax(dim=1).gather(1, index.unsqueeze(1)).squeeze(1)  # (B,H,W)
    # 1 - p_t via expm1 stays accurate near p_t = 1; the floor keeps pow's gradient finite there.
    modulator = (-torch.expm1(logp_t)).clamp_min(_EPS).pow(gamma)
    loss = -modulator * logp_t
    if isinstance(alpha, Tensor):
        _check_num_classes(alpha, logits, "alpha")
        loss = alpha.float()[index] * loss
    elif alpha is not None:
        loss = float(alpha) * loss
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1.0,
    ignore_index: int = -100,
    classes: Sequence[int] | None = None,
) -> Tensor:
    """1 - mean over classes of soft Dice (2 TP + s) / (sum p + sum g + s), counts over B, H, W.

    A class absent from the batch scores s / (sum p + s): predicting it is penalised, not it being
    absent. `classes` restricts the mean (e.g. [0, 2] to leave out background).
    """
    _check_smooth(smooth)
    tp, pred, true = _soft_counts(logits, target, ignore_index)
    dice = _ratio(2 * tp + smooth, pred + true + smooth)  # (C,)
    if classes is not None:
        classes = list(classes)
        _require(
            all(0 <= c < logits.shape[1] for c in classes),
            "classes",
            f"class indices in [0, {logits.shape[1]})",
            classes,
        )
        dice = dice[classes]
    return 1 - dice.mean()


def soft_iou(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1.0,
    ignore_index: int = -100,
    average: str = "class",
) -> Tensor:
    """Soft Jaccard index M in [0, 1] from softmax probabilities: (TP + s) / (union + s).

    "class": per class over the batch (B, H, W), mean over classes, like the mIoU metric.
    "image": the article's metric: per image, pooled over classes and pixels, mean over images
    (the article uses smooth=0.001).
    """
    _check_smooth(smooth)
    _require(average in ("class", "image"), "average", "'class' or 'image'", average)
    dims = (0, 2, 3) if average == "class" else (1, 2, 3)
    tp, pred, true = _soft_counts(logits, target, ignore_index, dims)
    return _ratio(tp + smooth, pred + true - tp + smooth).mean()


def iou_loss(
    logits: Tensor,
    target: Tensor,
    *,
    form: str = "one_minus",
    smooth: float = 1.0,
    ignore_index: int = -100,
    average: str = "class",
) -> Tensor:
    """1 - M ("one_minus") or -log M ("neg_log", steeper when M is small) for M = soft_iou."""
    _require(form in ("one_minus", "neg_log"), "form", "'one_minus' or 'neg_log'", form)
    m = soft_iou(logits, target, smooth=smooth, ignore_index=ignore_index, average=average)
    return 1 - m if form == "one_minus" else -torch.log(m.clamp_min(_EPS))


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    ignore_index: int = -100,
) -> Tensor:
    """1 - mean Tversky index (Salehi et al. 2017); alpha weighs false positives, beta negatives.

    The index is (2 TP + s) / (2 TP + 2 alpha FP + 2 beta FN + s): smooth enters in Dice scaling,
    so alpha = beta = 0.5 is exactly dice_loss with the same smooth (and alpha = beta = 1 is the
    IoU loss with smooth s / 2).
    """
    _require(math.isfinite(alpha) and alpha >= 0, "alpha", "finite and >= 0", alpha)
    _require(math.isfinite(beta) and beta >= 0, "beta", "finite and >= 0", beta)
    _check_smooth(smooth)
    tp, pred, true = _soft_counts(logits, target, ignore_index)
    fp, fn = pred - tp, true - tp
    index = _ratio(2 * tp + smooth, 2 * tp + 2 * alpha * fp + 2 * beta * fn + smooth)
    return 1 - index.mean()


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
    """Soft IoU (Jaccard) loss, 1 - M or -log M: trains on the quantity mIoU reports."""

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
