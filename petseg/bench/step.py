"""The step section: training images/s of SegModule under Lightning vs a hand-written loop."""

from __future__ import annotations

import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from petseg.bench.common import Batch, autocast, precision_name, synchronize
from petseg.build import build_module
from petseg.errors import ConfigError
from petseg.module import SegModule
from petseg.precision import resolve_precision


class InMemory:
    """Batches already on the device, as an iterable Lightning takes (a list would be read as one
    dataloader per element)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PlainLoop:
    """A hand-written training step: forward and loss (under autocast), backward, optimizer step.

    Without an optimizer, forward + backward alone (the per-model throughput).
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module,
        precision: str,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.net, self.criterion, self.optimizer = net.train(), criterion, optimizer
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    @classmethod
    def of(cls, module: SegModule, precision: str, device: torch.device) -> PlainLoop:
        """The loop over a SegModule's own network, loss and optimizer, as fit would set them up."""
        module.to(device)
        module.configure_model()  # compiles the network when perf.compile is set
        configured = module.configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        return cls(module.net, module.criterion, precision, device, optimizer)

    def step(self, batch: Batch) -> None:
        with autocast(self.precision, self.device):
            loss = self.criterion(self.net(batch["image"]), batch["mask"])
        if self.optimizer is None:
            self.net.zero_grad(set_to_none=True)
            loss.backward()
            return
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def seconds(self, batches: list[Batch], warmup: int) -> list[float]:
        """Seconds per step after `warmup`; the device is synchronised at the first and last
        boundary only, as StepTimer does."""
        stamps = []
        for i, batch in enumerate(batches):
            if i == warmup:
                synchronize(self.device)
            if i >= warmup:
                stamps.append(time.perf_counter())
            self.step(batch)
        synchronize(self.device)
        stamps.append(time.perf_counter())
        return [b - a for a, b in itertools.pairwise(stamps)]


class StepTimer(L.Callback):
    """Step boundaries after `warmup`: the start of each batch and the end of the last one.

    Between two starts lies all the work of one step, Lightning's own between steps included.
    The device is synchronised at the first and the last boundary only (a sync per step would
    stop the CPU running ahead of a GPU, which is part of what is measured).
    """

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.stamps: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        if idx == self.warmup:
            synchronize(self.device)
        if idx >= self.warmup:
            self.stamps.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if idx == self.total - 1:
            synchronize(self.device)
            self.stamps.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.stamps)]


class PlainBeside(L.Callback):
    """After each Lightning step, one plain step of a twin module on the same batch, timed.

    The two steps of a pair run back to back, so a shared CPU's slow spells hit both alike. Goes
    after StepTimer in the callback list: StepTimer's interval from one step's start to the next
    then holds one Lightning step plus this plain step, which `paired_step_seconds` subtracts.
    """

    def __init__(self, loop: PlainLoop, warmup: int) -> None:
        self.loop, self.warmup = loop, warmup
        self.seconds: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        start = time.perf_counter()
        self.loop.step(batch)
        if idx >= self.warmup:
            self.seconds.append(time.perf_counter() - start)


def lightning_trainer(
    precision: str, device: torch.device, steps: int, callbacks: list, root: str
) -> L.Trainer:
    """A Trainer that only trains: no logger, checkpoints, progress bar, summary or validation."""
    return L.Trainer(
        default_root_dir=root,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def lightning_step_seconds(
    module: SegModule, batches: list[Batch], warmup: int, precision: str, device: torch.device
) -> list[float]:
    """Seconds per step after `warmup` under `Trainer.fit`."""
    timer = StepTimer(warmup, len(batches), device)
    with tempfile.TemporaryDirectory() as root:
        trainer = lightning_trainer(precision, device, len(batches), [timer], root)
        trainer.fit(module, train_dataloaders=InMemory(batches))
    assert len(timer.stamps) == len(batches) - warmup + 1, "the timer missed a step"
    return timer.steps()


def paired_step_seconds(
    module: SegModule,
    twin: SegModule,
    batches: list[Batch],
    warmup: int,
    precision: str,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """(Lightning, plain) seconds per step after `warmup`, each pair run back to back: `module`
    under `Trainer.fit`, `twin` (same initial weights) in a PlainLoop. CPU only: the pairs'
    arithmetic needs the stamps to be the work's end, which a GPU's queue is not."""
    timer = StepTimer(warmup, len(batches), device)
    beside = PlainBeside(PlainLoop.of(twin, precision, device), warmup)
    with tempfile.TemporaryDirectory() as root:
        trainer = lightning_trainer(precision, device, len(batches), [timer, beside], root)
        trainer.fit(module, train_dataloaders=InMemory(batches))
    plain = beside.seconds
    steps = timer.steps()  # the last one ends before its plain step, the others after it
    lightning = [s - p for s, p in zip(steps[:-1], plain[:-1], strict=True)] + steps[-1:]
    return lightning, plain


def bench_step(
    cfg: DictConfig, batches: list[Batch], warmup: int, rounds: int, device: torch.device
) -> dict[str, Any]:
    """Lightning vs plain images/s, both from the same initial weights in every round.

    CPU: each Lightning step is followed by a plain step on the same batch (PlainBeside); `ratio`
    is the median over pairs of plain / Lightning seconds, which a shared CPU's slow spells
    (they last longer than a pair) leave alone. CUDA: separate runs, alternating which goes
    first; `ratio` = plain / Lightning total seconds (a GPU lets the CPU run ahead, so per-step
    stamps mean little).
    """
    if len(batches) <= warmup:
        raise ConfigError(f"--steps must be >= 1 (got {len(batches) - warmup} after warmup)")
    accelerator = "cuda" if batches[0]["image"].is_cuda else "cpu"
    precision = precision_name(resolve_precision(cfg.trainer.precision, accelerator))
    torch.manual_seed(0)
    initial = copy.deepcopy(build_module(cfg).state_dict())

    def fresh() -> SegModule:
        module = build_module(cfg)
        module.load_state_dict(initial)
        return module

    steps: dict[str, list[float]] = {"plain": [], "lightning": []}
    for r in range(rounds):
        if device.type == "cpu":
            lightning, plain = paired_step_seconds(
                fresh(), fresh(), batches, warmup, precision, device
            )
            steps["lightning"] += lightning
            steps["plain"] += plain
            continue
        for side in ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain"):
            if side == "plain":
                steps[side] += PlainLoop.of(fresh(), precision, device).seconds(batches, warmup)
            else:
                steps[side] += lightning_step_seconds(fresh(), batches, warmup, precision, device)
    median = {side: statistics.median(s) for side, s in steps.items()}
    total = {side: sum(s) for side, s in steps.items()}
    paired = device.type == "cpu"
    batch = int(batches[0]["image"].shape[0])
    return {
        "precision": precision,
        "batch": batch,
        "image_size": int(batches[0]["image"].shape[-1]),
        "warmup": warmup,
        "steps": len(batches) - warmup,
        "rounds": rounds,
        "method": "paired steps, median ratio" if paired else "separate runs, total time",
        "plain_images_per_s": batch / median["plain"],
        "lightning_images_per_s": batch / median["lightning"],
        "plain_step_s": steps["plain"],
        "lightning_step_s": steps["lightning"],
        "ratio_median_step": median["plain"] / median["lightning"],
        "ratio_total": total["plain"] / total["lightning"],
        "ratio": (
            statistics.median(
                p / q for p, q in zip(steps["plain"], steps["lightning"], strict=True)
            )
            if paired
            else total["plain"] / total["lightning"]
        ),
    }
