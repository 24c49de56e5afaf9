"""Pictures and tables logged by hand beside Lightning's scores, at the step those scores get."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn


def scores_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the loggers for this stage's epoch-end `self.log` scores.

    A validation inside fit runs after its batch's optimizer step but before Lightning's count of
    batches that stepped goes up: one below trainer.global_step. Otherwise trainer.global_step.
    """
    if trainer.state.fn == TrainerFn.FITTING:
        return max(0, trainer.global_step - 1)
    return trainer.global_step


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def log_to_wandb(trainer: L.Trainer, items: dict[str, Any]) -> None:
    """W&B media (`wandb.Image`, `wandb.Table`) to every W&B logger, at the scores' step."""
    for logger in wandb_loggers(trainer):
        logger.log_metrics(items, step=scores_step(trainer))  # type: ignore[arg-type]
