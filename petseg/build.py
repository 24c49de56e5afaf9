"""Objects from a composed config: `_target_` nodes through Hydra's instantiate, and SegModule.

train.py wires these for a run; evaluate and the bench build their pieces the same way.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petseg.console import quiet_wandb
from petseg.errors import user_error
from petseg.module import SegModule
from petseg.precision import resolve_precision


def build(node: Any, **kwargs: Any) -> Any:
    """hydra's instantiate, but a user error inside a constructor surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = user_error(e)
        if cause is not None:
            raise cause from None
        raise


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """The Trainer of `cfg.trainer`, `precision: auto` resolved for its accelerator."""
    precision = resolve_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.accelerator)
    return build(cfg.trainer, precision=precision, **kwargs)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [build(c) for c in (cfg.get("callbacks") or {}).values() if c]


def build_loggers(cfg: DictConfig) -> list[Any]:
    nodes = [c for c in (cfg.get("logger") or {}).values() if c]
    if any(str(c.get("_target_", "")).endswith("WandbLogger") for c in nodes):
        quiet_wandb()
    return [build(c) for c in nodes]


def build_module(cfg: DictConfig, article_protocol: bool = False) -> SegModule:
    """SegModule from a composed config: network, loss, optimizer, schedule and perf switches."""
    return SegModule(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler") or None,
        class_names=cfg.class_names,
        ignore_index=cfg.loss.get("ignore_index", -100),
        article_protocol=article_protocol,
        channels_last=cfg.perf.channels_last,
        compile=cfg.perf.compile,
        train_metrics_every_n_steps=cfg.perf.train_metrics_every_n_steps,
    )


def to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Lightning's metrics (tensors) as plain floats, for JSON, the log and a sweeper."""
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) or isinstance(v, float)}
