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


class FakeClock:
    """Time that moves only when the loader or the step says so: exact fractions, however
    loaded the machine running the test is."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlowItems(Dataset):
    """Items that take `delay` seconds each to load."""

    def __init__(self, clock: FakeClock, delay: float, n: int = 8) -> None:
        self.clock, self.delay, self.n = clock, delay, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.clock.advance(self.delay)
        return {"image": torch.ones(3, 4, 4), "mask": torch.zeros(4, 4, dtype=torch.long)}


class SlowStep(L.LightningModule):
    def __init__(self, clock: FakeClock, delay: float) -> None:
        super().__init__()
        self.clock, self.delay = clock, delay
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.clock.advance(self.delay)
        return self.layer(batch["image"].mean().reshape(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, load_s: float, step_s: float) -> tuple[DataWait, dict[str, float]]:
    clock = FakeClock()
    callback = DataWait(warn_above=0.1, clock=clock)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    loader = DataLoader(SlowItems(clock, load_s), batch_size=2)  # 4 batches, in this process
    trainer.fit(SlowStep(clock, step_s), loader)
    return callback, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_a_slow_loader_shows_as_wait_and_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"data loading took 88% .* data.num_workers"):
        callback, scores = fit(tmp_path, load_s=0.05, step_s=0.01)
    # Per batch: 2 x 50 ms loading, 10 ms step. The first batch's 100 ms wait is reported apart,
    # so the loop's time is 3 waits + 4 steps.
    assert scores["perf/data_wait_frac"] == pytest.approx(0.3 / 0.34)
    assert scores["perf/first_batch_s"] == pytest.approx(0.1)
    assert scores["perf/train_images_per_s"] == pytest.approx(8 / 0.34)
    assert callback.images == 8 and callback.batches == 4


def test_a_fast_loader_is_no_wait(tmp_path: Path, recwarn) -> None:
    _, scores = fit(tmp_path, load_s=0.001, step_s=0.05)
    assert scores["perf/data_wait_frac"] == pytest.approx(0.006 / 0.206)
    assert not [w for w in recwarn if "data loading took" in str(w.message)]


def test_the_real_clock_adds_up_to_the_loop_time(tmp_path: Path) -> None:
    """With the default clock, first wait + waits + steps are real time within the fit's."""
    callback = DataWait(warn_above=None)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    loader = DataLoader(SlowItems(FakeClock(), 0.0), batch_size=2)
    start = time.perf_counter()
    trainer.fit(SlowStep(FakeClock(), 0.0), loader)
    elapsed = time.perf_counter() - start
    assert callback.batches == 4 and callback.wait > 0 and callback.step > 0
    assert callback.first_wait + callback.wait + callback.step < elapsed
    assert 0 < trainer.callback_metrics["perf/data_wait_frac"] < 1
