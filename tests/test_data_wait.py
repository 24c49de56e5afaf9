"""DataWait: the share of a training epoch spent waiting for batches, from a loader and a step
whose durations the test sets."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from petseg.callbacks import DataWait

from conftest import quiet_trainer


class SlowItems(Dataset):
    """Batches of 2 images that take `delay` seconds each to load."""

    def __init__(self, delay: float, n: int = 8) -> None:
        self.delay, self.n = delay, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time.sleep(self.delay)
        return {"image": torch.ones(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long)}


class SlowStep(L.LightningModule):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        time.sleep(self.delay)
        return self.layer(batch["image"].mean().reshape(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, load_s: float, step_s: float, callback: DataWait) -> dict[str, float]:
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    loader = DataLoader(SlowItems(load_s), batch_size=2)  # 4 batches, loaded in this process
    trainer.fit(SlowStep(step_s), loader)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_a_slow_loader_shows_as_wait_and_warns(tmp_path: Path) -> None:
    callback = DataWait(warn_above=0.1)
    with pytest.warns(UserWarning, match=r"data loading took .* data.num_workers"):
        scores = fit(tmp_path, load_s=0.05, step_s=0.01, callback=callback)
    # Per batch: 2 x 50 ms loading, 10 ms step; the first batch's wait is reported apart.
    assert scores["perf/data_wait_frac"] == pytest.approx(100 / 110, abs=0.08)
    assert scores["perf/first_batch_s"] == pytest.approx(0.1, abs=0.08)
    assert scores["perf/train_images_per_s"] == pytest.approx(2 / 0.11, rel=0.3)
    assert callback.images == 8 and callback.batches == 4


def test_a_fast_loader_is_no_wait(tmp_path: Path, recwarn) -> None:
    scores = fit(tmp_path, load_s=0.0, step_s=0.05, callback=DataWait(warn_above=0.1))
    assert scores["perf/data_wait_frac"] < 0.1
    assert not [w for w in recwarn if "data loading took" in str(w.message)]
