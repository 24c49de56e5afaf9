"""The W&B run of a CLI: `logger.wandb` against WANDB_MODE, closing the run, and the training
run a checkpoint came from (its W&B id and group, as training records them in status.json).

Shared by petseg.train, which writes those fields, and petseg.evaluate, which links to them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from petseg.run_status import read_status


def has_wandb(cfg: DictConfig) -> bool:
    """Whether the composed config logs to W&B (`logger.wandb`)."""
    return bool(cfg.get("logger")) and "wandb" in cfg.logger


def apply_wandb_env(cfg: DictConfig) -> None:
    """WANDB_MODE in the environment wins over `logger.wandb.offline`; `disabled` drops W&B.

    Checkpoint artifacts (`log_model`) are uploaded only online: offline they cannot be.
    """
    if not has_wandb(cfg):
        return
    mode = os.environ.get("WANDB_MODE")
    with open_dict(cfg):
        if mode == "disabled":
            del cfg.logger["wandb"]
            return
        if mode:
            cfg.logger.wandb.offline = mode in ("offline", "dryrun")
        if cfg.logger.wandb.offline:
            cfg.logger.wandb.log_model = False


def finish_wandb(exit_code: int = 0) -> None:
    """Close this job's W&B run with the run's exit code (non-zero: W&B marks it failed), so the
    next multirun job starts its own."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish(exit_code=exit_code)


def wandb_status_fields(cfg: DictConfig) -> dict[str, str | None]:
    """What status.json records of a run's W&B run: `wandb_id` (a resume continues it) and
    `wandb_group` (an evaluation of its checkpoint joins it); None without W&B."""
    wandb_cfg = cfg.logger.wandb if has_wandb(cfg) else {}
    return {"wandb_id": wandb_cfg.get("id"), "wandb_group": wandb_cfg.get("group")}


def training_run(ckpt_path: str | Path) -> tuple[Path | None, dict[str, Any]]:
    """The run folder a checkpoint was saved in (the parent of its `checkpoints/`) and that
    folder's status.json; (None, {}) for a checkpoint kept anywhere else."""
    folder = Path(ckpt_path).resolve().parent
    if folder.name != "checkpoints":
        return None, {}
    return folder.parent, read_status(folder.parent)
