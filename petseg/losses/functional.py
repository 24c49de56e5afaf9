"""Loss functional core: input and option checks, soft counts, and each loss as a pure function."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

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
