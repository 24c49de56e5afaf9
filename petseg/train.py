"""`python -m petseg.train [overrides]`: compose the config, wire the objects, fit and test.

This is the only place objects are wired together; everything else is built from `_target_`s.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from petseg.errors import PetsegError
from petseg.module import SegModule

log = logging.getLogger("petseg.train")


def model_stats(net: torch.nn.Module, image_size: int, in_channels: int = 3) -> dict[str, int]:
    """Parameters and mult-adds at the configured input size (torchinfo), printed and logged."""
    from torchinfo import summary

    stats = summary(
        net, input_size=(1, in_channels, image_size, image_size), depth=2, verbose=0, device="cpu"
    )
    log.info("Model summary at %dx%d:\n%s", image_size, image_size, stats)
    return {
        "model/params": int(stats.total_params),
        "model/trainable_params": int(stats.trainable_params),
        "model/mult_adds": int(stats.total_mult_adds),
    }


def apply_wandb_env(cfg: DictConfig) -> None:
    """WANDB_MODE in the environment wins over `logger.wandb.offline`; `disabled` drops W&B."""
    mode = os.environ.get("WANDB_MODE")
    if not mode or not cfg.get("logger") or "wandb" not in cfg.logger:
        return
    with open_dict(cfg):
        if mode == "disabled":
            del cfg.logger["wandb"]
        else:
            cfg.logger.wandb.offline = mode in ("offline", "dryrun")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]


def finish_wandb() -> None:
    """Close this job's W&B run, so the next multirun job starts its own."""
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


def to_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) or isinstance(v, float)}


def resolve_auto_weights(cfg: DictConfig, datamodule: Any) -> None:
    """`loss.weight: auto` -> class weights from the training split's pixel frequencies.

    The list, not `auto`, goes into the checkpoint, so a reloaded model has the same loss.
    """
    if cfg.loss.get("weight") != "auto":
        return
    from petseg.losses import class_weights_from_counts

    counts = datamodule.class_pixel_counts()
    weights = class_weights_from_counts(counts, cfg.loss.get("weight_scheme", "inverse_sqrt"))
    log.info("Class pixel counts %s -> loss weights %s", counts.tolist(), weights.tolist())
    with open_dict(cfg):
        cfg.loss.weight = [round(float(w), 6) for w in weights]
        cfg.loss.pop("weight_scheme", None)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one run; returns the final metrics, e.g. `val/miou` for a sweeper."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    apply_wandb_env(cfg)

    datamodule = instantiate(cfg.data)
    datamodule.check_source()
    resolve_auto_weights(cfg, datamodule)
    module = SegModule(
        net=cfg.model,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler") or None,
        class_names=cfg.class_names,
        ignore_index=cfg.loss.get("ignore_index", -100),
    )
    stats = model_stats(module.net, cfg.data.image_size, cfg.model.get("in_channels", 3))

    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=loggers)
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **stats})
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = to_floats(trainer.callback_metrics)
        best = trainer.checkpoint_callback
        if best is not None and best.best_model_score is not None:
            metrics["val/miou_best"] = float(best.best_model_score)
            log.info(
                "Best checkpoint: %s (val/miou %.4f)",
                best.best_model_path,
                metrics["val/miou_best"],
            )
        if cfg.get("test"):
            ckpt = "best" if best is not None and best.best_model_path else None
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
            metrics.update(to_floats(trainer.callback_metrics))
    finally:
        finish_wandb()
    return {**metrics, **{k: float(v) for k, v in stats.items()}}


def one_line(error: BaseException) -> str:
    """The message alone, also when a DataLoader worker wrapped it in its traceback text."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except PetsegError as e:
        log.error("%s", one_line(e))
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    # A sweeper (e.g. Optuna) optimises the returned value.
    return metrics.get("val/miou_best", metrics.get("val/miou"))


if __name__ == "__main__":
    main()
