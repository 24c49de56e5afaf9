"""petseg.metrics against hand-computed values: confusion-matrix scores, argmax with its ties
and the article protocol's config switch (SegModule's use of them is tested
in test_module.py)."""

from __future__ import annotations

import math

import albumentations as A
import pytest
import torch
from hydra.utils import instantiate

from petseg.metrics import argmax_classes, article_protocol, scores_from_confmat

PET, BG, BORDER = 0, 1, 2
NAMES = ["pet", "background", "border"]

# Rows target, cols pred: two batches' confusion matrices (test_module.py draws their grids).
CM_A = [[3, 1, 0], [1, 11, 0], [0, 0, 0]]
CM_B = [[4, 0, 0], [0, 1, 0], [1, 1, 9]]


def test_scores_from_confmat_match_hand_counts() -> None:
    cm = torch.tensor(CM_A) + torch.tensor(CM_B)  # [[7, 1, 0], [1, 12, 0], [1, 1, 9]]
    s = scores_from_confmat(cm, NAMES)
    # IoU = tp / (row + col - tp); Dice = 2 tp / (row + col).
    expected = {
        "pixel_acc": 28 / 32,
        "iou_pet": 7 / (8 + 9 - 7),
        "iou_background": 12 / (13 + 14 - 12),
        "iou_border": 9 / (11 + 9 - 9),
        "dice_pet": 14 / 17,
        "dice_background": 24 / 27,
        "dice_border": 18 / 20,
        "miou": (7 / 10 + 12 / 15 + 9 / 11) / 3,
        "mdice": (14 / 17 + 24 / 27 + 18 / 20) / 3,
    }
    assert {k: float(v) for k, v in s.items()} == pytest.approx(expected, abs=1e-6)


def test_scores_absent_class_is_nan_and_left_out_of_the_means() -> None:
    s = scores_from_confmat(torch.tensor(CM_A), NAMES)
    assert math.isnan(s["iou_border"]) and math.isnan(s["dice_border"])
    assert float(s["miou"]) == pytest.approx((3 / 5 + 11 / 13) / 2, abs=1e-6)
    assert float(s["mdice"]) == pytest.approx((6 / 8 + 22 / 24) / 2, abs=1e-6)
    assert math.isnan(scores_from_confmat(torch.zeros(3, 3), NAMES)["miou"])


@pytest.mark.parametrize("num_classes", [2, 3, 7, 300])  # 300: past uint8's class indices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_classes_equals_argmax_with_its_ties(num_classes: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = torch.randint(-3, 4, (2, num_classes, 8, 8)).to(dtype)  # small ints: many ties
    preds = argmax_classes(logits)
    assert preds.dtype == torch.long
    assert torch.equal(preds, logits.float().argmax(1))


def test_article_protocol_turns_on_eval_augment(cfg_factory) -> None:
    cfg = cfg_factory("data=synthetic", "metrics.article_protocol=true")
    assert article_protocol(cfg) is True and cfg.data.eval_augment is True  # interpolated
    kept = cfg_factory("data=synthetic", "metrics.article_protocol=true", "data.eval_augment=false")
    assert kept.data.eval_augment is False  # an explicit choice wins
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    steps = [type(t) for t in datamodule.test_set.transform.transforms]
    assert A.HorizontalFlip in steps and A.ColorJitter in steps

    clean = cfg_factory("data=synthetic")
    assert article_protocol(clean) is False and clean.data.eval_augment is False
    datamodule = instantiate(clean.data)
    datamodule.setup("test")
    assert A.HorizontalFlip not in [type(t) for t in datamodule.test_set.transform.transforms]
