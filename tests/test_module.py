"""SegModule's own bookkeeping: the best val/miou of a fit, logged every epoch and kept across a
resume (the metrics themselves are tested in test_metrics.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

import petseg.module
from petseg.module import SegModule

from conftest import quiet_trainer

# val/miou per epoch: up, down, no score at all (NaN), down.
SCHEDULE = [0.2, 0.5, float("nan"), 0.3]


def conv_module() -> SegModule:
    return SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )


def fit(root: Path, epochs: int, monkeypatch, ckpt_path: Path | None = None) -> list[dict]:
    """Fit with val/miou forced to SCHEDULE[epoch]; the CSV rows that hold val/miou."""
    torch.manual_seed(0)
    items = [{"image": torch.rand(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(4)]
    loader = DataLoader(items, batch_size=2)
    logger = CSVLogger(root, name="csv", version=0)
    trainer = quiet_trainer(root, max_epochs=epochs, logger=logger, num_sanity_val_steps=1)
    real = petseg.module.scores_from_confmat

    def scripted(cm, names):  # the sanity check sees SCHEDULE[0] too: it must not count
        return {**real(cm, names), "miou": torch.tensor(SCHEDULE[trainer.current_epoch])}

    monkeypatch.setattr(petseg.module, "scores_from_confmat", scripted)
    module = conv_module()
    trainer.fit(module, loader, loader, ckpt_path=ckpt_path)
    trainer.save_checkpoint(root / "last.ckpt")
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val/miou")]


def best_columns(rows: list[dict]) -> list[tuple]:
    """(epoch, val/miou, val/miou_best, val/miou_best_epoch) per row; NaN as None."""

    def value(text: str) -> float | None:
        return None if math.isnan(float(text)) else round(float(text), 6)

    keys = ("val/miou", "val/miou_best", "val/miou_best_epoch")
    return [(int(r["epoch"]), *(value(r[k]) for k in keys)) for r in rows]


def test_best_val_miou_is_logged_every_epoch_and_survives_a_resume(
    tmp_path: Path, monkeypatch
) -> None:
    rows = fit(tmp_path / "first", 2, monkeypatch)
    assert best_columns(rows) == [(0, 0.2, 0.2, 0), (1, 0.5, 0.5, 1)]

    loaded = SegModule.load_from_checkpoint(tmp_path / "first" / "last.ckpt")
    assert loaded.best_val_miou == pytest.approx(0.5) and loaded.best_val_epoch == 1

    # Resumed: epoch 2 (NaN) and 3 (0.3) are below epoch 1's 0.5, kept in the checkpoint.
    rows = fit(tmp_path / "resumed", 4, monkeypatch, ckpt_path=tmp_path / "first" / "last.ckpt")
    assert best_columns(rows) == [(2, None, 0.5, 1), (3, 0.3, 0.5, 1)]


def test_a_lone_validate_logs_no_best(tmp_path: Path) -> None:
    items = [{"image": torch.rand(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(2)]
    out = quiet_trainer(tmp_path).validate(conv_module(), DataLoader(items, batch_size=2))[0]
    assert "val/miou" in out and "val/miou_best" not in out  # not a fit: no history to be best in
