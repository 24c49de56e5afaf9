"""Metrics against hand-computed values: confusion-matrix scores, the module's split-level
accumulation, the article's IoU and soft IoU, and the confusion matrix written as PNG + CSV.

The module runs with an identity network, so a batch's "image" is its logits: one-hot predictions
written by hand below go through the real Lightning validate/test loop.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import albumentations as A
import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader

from petseg.losses import soft_iou
from petseg.metrics import (
    argmax_classes,
    article_protocol,
    confusion_table,
    metric_inputs,
    scores_from_confmat,
)
from petseg.module import SegModule

from conftest import quiet_trainer

PET, BG, BORDER = 0, 1, 2
NAMES = ["pet", "background", "border"]

# Batch A: a pet in the background; no border anywhere (target or prediction).
TARGET_A = [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
PRED_A = [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]]
# Batch B: a pet framed by border, one background pixel.
TARGET_B = [[2, 2, 2, 2], [2, 0, 0, 2], [2, 0, 0, 2], [2, 2, 2, 1]]
PRED_B = [[2, 2, 1, 2], [2, 0, 0, 0], [2, 0, 0, 2], [2, 2, 2, 1]]
# Rows target, cols pred, counted by hand from the grids above.
CM_A = [[3, 1, 0], [1, 11, 0], [0, 0, 0]]
CM_B = [[4, 0, 0], [0, 1, 0], [1, 1, 9]]


def batch(target: list[list[int]], pred: list[list[int]]) -> dict[str, torch.Tensor]:
    """One 1x4x4 batch whose 'image' is logits that argmax to `pred`."""
    logits = 4.0 * torch.nn.functional.one_hot(torch.tensor(pred), 3).permute(2, 0, 1).float()
    return {"image": logits[None], "mask": torch.tensor(target)[None]}


def identity_module(article: bool = False) -> SegModule:
    return SegModule(
        net={"_target_": "torch.nn.Identity"},
        loss={"_target_": "petseg.losses.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        class_names=NAMES,
        article_protocol=article,
    )


def make_trainer(root: Path, logger=False) -> L.Trainer:
    return quiet_trainer(root, logger=logger)


def loader(*batches: dict[str, torch.Tensor]) -> DataLoader:
    return DataLoader(list(batches), batch_size=None)  # each item is already a batch


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


def test_module_accumulates_over_the_split(tmp_path: Path) -> None:
    """Border is absent from batch A but not from the split; val sees A only: no border at all."""
    module = identity_module()
    trainer = make_trainer(tmp_path)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    test = trainer.test(module, dataloaders=loader(a, b), verbose=False)[0]
    dataset_miou = (7 / 10 + 12 / 15 + 9 / 11) / 3
    assert test["test/iou_pet"] == pytest.approx(7 / 10, abs=1e-6)
    assert test["test/iou_background"] == pytest.approx(12 / 15, abs=1e-6)
    assert test["test/iou_border"] == pytest.approx(9 / 11, abs=1e-6)
    assert test["test/miou"] == pytest.approx(dataset_miou, abs=1e-6)
    assert test["test/pixel_acc"] == pytest.approx(28 / 32, abs=1e-6)
    assert test["test/mdice"] == pytest.approx((14 / 17 + 24 / 27 + 18 / 20) / 3, abs=1e-6)

    # The mean of per-batch mIoUs (A has no border, so its mIoU averages two classes) differs.
    miou_a, miou_b = (3 / 5 + 11 / 13) / 2, (4 / 5 + 1 / 2 + 9 / 11) / 3
    assert abs((miou_a + miou_b) / 2 - dataset_miou) > 0.01
    assert abs((11 / 13 + 1 / 2) / 2 - test["test/iou_background"]) > 0.1

    val = trainer.validate(module, dataloaders=loader(a), verbose=False)[0]
    assert math.isnan(val["val/iou_border"]) and math.isnan(val["val/dice_border"])
    assert val["val/miou"] == pytest.approx((3 / 5 + 11 / 13) / 2, abs=1e-6)
    assert "val/article_iou" not in val  # the clean protocol is the default

    # Metrics are reset between runs: a second test gives the same, not a running total.
    again = trainer.test(module, dataloaders=loader(a, b), verbose=False)[0]
    assert again["test/miou"] == pytest.approx(dataset_miou, abs=1e-6)


def test_article_iou_is_micro_jaccard_without_background_targets(tmp_path: Path) -> None:
    """Pixels whose target is background are dropped; the rest give, summed over pet and border,
    TP / (TP + FP + FN). A and B hold 19 such pixels: 16 right, one pet and one border predicted
    background (FN only), one border predicted pet (FP for pet, FN for border)."""
    module = identity_module(article=True)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    test = make_trainer(tmp_path).test(module, dataloaders=loader(a, b), verbose=False)[0]
    tp, fp, fn = 3 + 4 + 9, 1, 1 + 2
    assert test["test/article_iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)  # 16 / 20
    # Same from the full confusion matrix, with row and column of background left out.
    cm = torch.tensor(CM_A) + torch.tensor(CM_B)
    cm[BG] = 0
    kept = [PET, BORDER]
    manual = (
        cm.diagonal()[kept].sum() / (cm.sum(0)[kept] + cm.sum(1)[kept] - cm.diagonal()[kept]).sum()
    )
    assert test["test/article_iou"] == pytest.approx(float(manual), abs=1e-6)


def test_article_iou_skips_ignored_pixels(tmp_path: Path) -> None:
    module = identity_module(article=True)
    a = batch(TARGET_B, PRED_B)
    a["mask"][0, 0, :] = -100  # the module's ignore_index: a row of border, one predicted bg
    test = make_trainer(tmp_path).test(module, dataloaders=loader(a), verbose=False)[0]
    # Left: 4 pet right, 6 of 7 border right, 1 border -> pet (FP + FN): 10 / (10 + 1 + 1).
    assert test["test/article_iou"] == pytest.approx(10 / 12, abs=1e-6)


def test_soft_iou_is_the_mean_over_images_not_over_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 8, 8) * 3
    mask = torch.randint(0, 3, (3, 8, 8))
    mask[2] = BG  # one easy-to-tell image, so the per-batch means differ
    logits[2, BG] += 6
    batches = [{"image": logits[:2], "mask": mask[:2]}, {"image": logits[2:], "mask": mask[2:]}]
    test = make_trainer(tmp_path).test(identity_module(), loader(*batches), verbose=False)[0]

    per_image = [
        soft_iou(logits[i : i + 1], mask[i : i + 1], smooth=0.001, average="image")
        for i in range(3)
    ]
    expected = float(torch.stack(per_image).mean())
    whole = float(soft_iou(logits, mask, smooth=0.001, average="image"))
    assert expected == pytest.approx(whole, abs=1e-6)  # "image" already means over images
    assert test["test/soft_iou"] == pytest.approx(expected, abs=1e-6)
    batch_means = [
        float(soft_iou(b["image"], b["mask"], smooth=0.001, average="image")) for b in batches
    ]
    assert abs(sum(batch_means) / 2 - expected) > 0.01


@pytest.mark.parametrize("num_classes", [2, 3, 7, 300])  # 300: past uint8's class indices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_classes_equals_argmax_with_its_ties(num_classes: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = torch.randint(-3, 4, (2, num_classes, 8, 8)).to(dtype)  # small ints: many ties
    preds = argmax_classes(logits)
    assert preds.dtype == torch.long
    assert torch.equal(preds, logits.float().argmax(1))


@pytest.mark.parametrize("smooth", [0.001, 0.0, 1.0])
def test_metric_inputs_equal_argmax_labels_and_soft_iou(smooth: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 16, 16) * 4
    logits[0, :, :2, :2] = 1.5  # exact ties: argmax takes the first class
    mask = torch.randint(0, 3, (4, 16, 16))
    mask[1, :5] = -100  # partly ignored
    mask[2] = -100  # fully ignored: scores 1, as in soft_iou
    preds, labels, soft = metric_inputs(logits, mask, ignore_index=-100, smooth=smooth)

    assert torch.equal(preds, logits.argmax(1))
    assert torch.equal(labels, mask.masked_fill(mask == -100, 3))
    expected = torch.stack(
        [
            soft_iou(logits[i : i + 1], mask[i : i + 1], smooth=smooth, average="image")
            for i in range(4)
        ]
    )
    assert soft.shape == (4,)
    torch.testing.assert_close(soft, expected, rtol=1e-5, atol=1e-6)
    assert soft[2] == 1.0
    # bf16 logits (autocast) are scored in float32, as soft_iou does.
    soft_bf16 = metric_inputs(logits.bfloat16(), mask, smooth=smooth).soft_iou
    expected_bf16 = soft_iou(logits.bfloat16(), mask, smooth=smooth, average="image")
    torch.testing.assert_close(soft_bf16.mean(), expected_bf16, rtol=1e-5, atol=1e-6)


def test_confusion_png_and_csv_are_written(tmp_path: Path) -> None:
    module = identity_module()
    trainer = make_trainer(tmp_path)
    a, b = batch(TARGET_A, PRED_A), batch(TARGET_B, PRED_B)
    trainer.validate(module, dataloaders=loader(a), verbose=False)
    trainer.test(module, dataloaders=loader(a, b), verbose=False)

    folder = tmp_path / "confusion"
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_epoch000.csv",
        "test_epoch000.png",
        "val_epoch000.csv",
        "val_epoch000.png",
    ]
    with open(folder / "test_epoch000.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["target", "pred_pet", "pred_background", "pred_border", "total"]
    cm = (torch.tensor(CM_A) + torch.tensor(CM_B)).tolist()
    assert rows[1:] == [[n, *map(str, r), str(sum(r))] for n, r in zip(NAMES, cm, strict=True)]
    with Image.open(folder / "val_epoch000.png") as img:
        assert img.mode == "RGB" and img.width > 200 and img.height > 100
    columns, table = confusion_table(torch.tensor(CM_A), NAMES)
    assert columns[0] == "target" and table[2] == ["border", 0, 0, 0, 0]


def test_confusion_with_a_disabled_wandb_logger(tmp_path: Path, monkeypatch) -> None:
    """W&B gets the table and image when it is a logger; a disabled run must not break that."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = [CSVLogger(tmp_path, name="csv"), WandbLogger(save_dir=tmp_path, offline=True)]
    try:
        out = make_trainer(tmp_path, logger=loggers).validate(
            identity_module(), dataloaders=loader(batch(TARGET_B, PRED_B)), verbose=False
        )[0]
    finally:
        import wandb

        wandb.finish()
    assert out["val/iou_border"] == pytest.approx(9 / 11, abs=1e-6)
    assert (tmp_path / "confusion" / "val_epoch000.png").is_file()


def test_article_protocol_turns_on_eval_augment(cfg_factory) -> None:
    cfg = cfg_factory("data=synthetic", "metrics.article_protocol=true")
    assert cfg.data.eval_augment is False  # set by the protocol, not by hand
    assert article_protocol(cfg) is True and cfg.data.eval_augment is True
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


def conv_module() -> SegModule:
    """A 1x1 conv network: trainable, cheap."""
    return SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "petseg.losses.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        class_names=NAMES,
    )


def train_batches(n: int, nan_at: int | None = None) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    batches = [
        {"image": torch.randn(1, 3, 4, 4), "mask": torch.randint(0, 3, (1, 4, 4))} for _ in range(n)
    ]
    if nan_at is not None:
        batches[nan_at]["image"][0, 0, 0, 0] = float("nan")
    return batches


def test_train_loss_is_logged_only_on_logging_steps(tmp_path: Path, monkeypatch) -> None:
    module = conv_module()
    logged: list[int] = []
    log = SegModule.log

    def spy(self, name, value, *args, **kwargs):
        if name == "train/loss":
            logged.append(self.global_step)
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(SegModule, "log", spy)
    csv_logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version="")
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=3, logger=csv_logger)
    trainer.fit(module, train_dataloaders=loader(*train_batches(7)))

    # Steps 3 and 6 of 7 (0-based 2, 5), which the logger writes, and the epoch's last batch,
    # so the progress bar and callback_metrics end on the last step's loss.
    assert logged == [2, 5, 6]
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert (
        "train/loss" in trainer.callback_metrics and "train/loss_epoch" in trainer.callback_metrics
    )


@pytest.mark.parametrize(
    ("every_step", "nan_at", "stopped_at"),
    [
        (True, 1, 1),  # CPU default: the step itself
        (False, 1, 2),  # GPU default: deferred to the next logging step (every 3rd)...
        (False, 6, 6),  # ...or the epoch's last batch, before any epoch-end checkpoint
    ],
)
def test_non_finite_loss_names_its_first_step(
    tmp_path: Path, every_step: bool, nan_at: int, stopped_at: int
) -> None:
    from petseg.errors import NonFiniteLossError

    module = conv_module()
    module.check_loss_every_step = every_step
    seen: list[int] = []

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=3, callbacks=[Steps()])
    with pytest.raises(NonFiniteLossError, match=rf"at global step {nan_at} \(epoch 0\)"):
        trainer.fit(module, train_dataloaders=loader(*train_batches(7, nan_at)))
    assert seen[-1] == stopped_at
