"""Lightning callbacks of petseg's own: small, one job each."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from petseg.errors import PetsegError


class SaveOnInterrupt(L.Callback):
    """On a crash, Ctrl-C or SIGTERM mid-epoch, save `<dirpath>/<filename>.ckpt`: the work so far.

    Not on a user error (a config mistake, a non-finite loss whose weights may be NaN): there
    `last.ckpt`, the previous epoch's end, is the one to go back to. Lightning's
    OnExceptionCheckpoint saves on every exception.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, PetsegError):
            return
        trainer.save_checkpoint(self.path)


class DataWait(L.Callback):
    """Logs per epoch the share of training time spent waiting for batches: a starved device.

    `perf/data_wait_frac`: time between one step's end and the next step's start (loading, transfer,
    `on_after_batch_transfer`) over the loop's time, validation and the first batch left out;
    `perf/first_batch_s` (worker start-up); `perf/train_images_per_s`. Warns once per fit above
    `warn_above`. CPU wall clock: on a GPU the CPU queues steps ahead between syncs, so there the
    fraction is an upper bound on the device's idle time.
    """

    def __init__(
        self, warn_above: float | None = 0.1, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.warn_above = warn_above
        self.clock = clock  # tests pass a fake clock to get exact fractions on a loaded machine
        self._warned = False
        self._reset()

    def _reset(self) -> None:
        self._mark = self.clock()
        self.first_wait = self.wait = self.step = 0.0
        self.images = self.batches = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = self.clock()
        if self.batches == 0:
            self.first_wait = now - self._mark
        else:
            self.wait += now - self._mark
        self._mark = now

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = self.clock()
        self.step += now - self._mark
        self._mark = now
        self.batches += 1
        image = batch.get("image") if isinstance(batch, dict) else None
        self.images += int(image.shape[0]) if isinstance(image, torch.Tensor) else 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = self.clock()  # a mid-epoch validation (val_check_interval) is no wait

    @property
    def wait_fraction(self) -> float:
        total = self.wait + self.step
        return self.wait / total if total > 0 else 0.0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.batches == 0:
            return
        total = self.wait + self.step
        scores = {"perf/data_wait_frac": self.wait_fraction, "perf/first_batch_s": self.first_wait}
        if self.images and total > 0:
            scores["perf/train_images_per_s"] = self.images / total
        pl_module.log_dict(scores)
        if (
            self.warn_above is not None
            and not self._warned
            and self.batches > 2
            and self.wait_fraction > self.warn_above
        ):
            self._warned = True
            rank_zero_warn(
                f"data loading took {self.wait_fraction:.0%} of training epoch "
                f"{trainer.current_epoch}'s time: the input pipeline limits this run; raise "
                "data.num_workers, keep data.cache=true, or try data.gpu_augment=true"
            )
