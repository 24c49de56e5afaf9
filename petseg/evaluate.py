"""`python -m petseg.evaluate ckpt_path=... [overrides]`: a checkpoint on the official test split.

Prints the protocol and every `test/*` metric, writes them to `<run dir>/metrics.json` (and
`output=`), the confusion matrix to `<run dir>/confusion/`. `resolution=original` scores each
image at its own size against its untouched trimap (`petseg.fullsize`), `resolution=train` as
training's `test/*` metrics; `tta.*` averages flips and scales (`petseg.tta`). `logger=wandb`
logs a run of its own (job_type `evaluate`), linked to the training run (`train_run_id`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from petseg.build import build, build_loggers, build_trainer, to_floats
from petseg.checkpoint import load_module
from petseg.config import CONF_DIR
from petseg.data.oxford import PetTrimaps
from petseg.errors import ConfigError, PetsegError, print_user_error
from petseg.fullsize import FullSizeScorer, full_size_loader
from petseg.media import log_to_wandb, wandb_loggers
from petseg.metrics import article_protocol
from petseg.module import SegModule
from petseg.tta import apply_tta, tta_options
from petseg.visualize import spread_over_breeds, to_rgb, wandb_overlays
from petseg.wandb_run import apply_wandb_env, finish_wandb, has_wandb, training_run

log = logging.getLogger("petseg.evaluate")

# What each `resolution=` scores, as printed and saved beside the metrics.
PROTOCOLS = {
    "original": "resolution=original: each image at its own size, logits resized bilinearly to "
    "its full-size trimap, labels untouched",
    "train": "resolution=train: at data.image_size, trimaps resized (nearest) like the images, "
    "as training's test/* metrics",
}
RESOLUTIONS = tuple(PROTOCOLS)
# Test images logged to W&B with their true and predicted masks (spread over breeds).
OVERLAY_IMAGES = 8


def write_json(metrics: dict[str, float], path: str | Path, protocol: str | None = None) -> Path:
    """Metrics as strict JSON, sorted by name, after `"protocol"` when given; NaN (a class absent
    from the split) becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean: dict[str, float | str | None] = {"protocol": protocol} if protocol else {}
    clean.update({k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())})
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


def resolution_option(cfg: DictConfig) -> str:
    """`resolution`, checked: `original` or `train`; `original` refuses augmented test images."""
    resolution = cfg.get("resolution", "original")
    if resolution not in RESOLUTIONS:
        raise ConfigError(
            f"resolution={resolution}: use original (score each image at its own size against its "
            "full-size trimap; the default) or train (at data.image_size, as training's test/*)"
        )
    if resolution == "original":
        if (cfg.get("metrics") or {}).get("article_protocol"):
            option = "metrics.article_protocol=true"
        elif (cfg.get("data") or {}).get("eval_augment"):
            option = "data.eval_augment=true"
        else:
            return resolution
        raise ConfigError(
            f"{option} augments the test images (flips), which the untouched full-size trimaps "
            "of resolution=original do not follow; add resolution=train"
        )
    return resolution


def protocol_line(cfg: DictConfig) -> str:
    """What was scored: the resolution's protocol, and the TTA when on (checked options)."""
    protocol = PROTOCOLS[resolution_option(cfg)]
    tta = tta_options(cfg)
    return f"{protocol}; {tta.describe()}" if tta.active else protocol


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.ckpt_path` on the test split of `cfg.data`; returns the `test/*` metrics.

    The W&B run of `logger=wandb` is finished here: exit code 0, or 1 (failed) on an error.
    """
    try:
        metrics = score(cfg)
    except BaseException:
        finish_wandb(1)
        raise
    finish_wandb(0)
    return metrics


def score(cfg: DictConfig) -> dict[str, float]:
    """The evaluation itself: scores, metrics.json, and what the loggers of `logger=` get."""
    resolution = resolution_option(cfg)
    tta = tta_options(cfg)  # before the checkpoint loads: a bad value is one line at once
    protocol = protocol_line(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    article = article_protocol(cfg)  # sets data.eval_augment when on
    module = apply_tta(load_module(cfg.get("ckpt_path"), article), tta)
    datamodule = build(cfg.data)
    if list(module.class_names) != datamodule.class_names:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} predicts {', '.join(module.class_names)}, but "
            f"data.labels={cfg.data.labels} data.border={cfg.data.border} labels "
            f"{', '.join(datamodule.class_names)}: pass the training run's data.labels and "
            "data.border"
        )
    datamodule.check_source()
    run_dir, run_status = training_run(cfg.ckpt_path)  # the training run it came from
    name_wandb_run(cfg, resolution, tta.active, run_status)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, logger=loggers or False, enable_checkpointing=False)
    config = run_config(cfg, protocol, run_dir, run_status)
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
    if resolution == "train":
        trainer.test(module, datamodule=datamodule, verbose=False)
    else:
        datamodule.prepare_data()
        datamodule.setup("test")
        dm = datamodule
        loader = full_size_loader(dm.test_set, dm.batch_size, dm.num_workers, dm.pin_memory)
        trainer.test(FullSizeScorer(module), dataloaders=loader, verbose=False)
    metrics = to_floats(trainer.callback_metrics)
    if wandb_loggers(trainer):
        log_wandb_predictions(trainer, module, datamodule.test_set)
    written = [write_json(metrics, Path(cfg.paths.output_dir) / "metrics.json", protocol)]
    if cfg.get("output"):
        written.append(write_json(metrics, cfg.output, protocol))
    log.info("Protocol: %s", protocol)
    log.info("Metrics written to %s", ", ".join(str(p) for p in written))
    return metrics


def name_wandb_run(
    cfg: DictConfig, resolution: str, tta: bool, train_status: dict[str, Any]
) -> None:
    """`logger.wandb` for an evaluation (WANDB_MODE first): job_type `evaluate`, name
    `evaluate-<training W&B id>`, the training run's W&B group when its status.json records one,
    tags `evaluate`, `resolution:<r>` (and `tta`); no checkpoint artifacts. Fills only what the
    user left empty."""
    apply_wandb_env(cfg)
    if not has_wandb(cfg):
        return
    train_id, group = train_status.get("wandb_id"), train_status.get("wandb_group")
    wandb_cfg = cfg.logger.wandb
    with open_dict(cfg):
        if not wandb_cfg.get("job_type"):
            wandb_cfg.job_type = "evaluate"
        if not wandb_cfg.get("name") and train_id:
            wandb_cfg.name = f"evaluate-{train_id}"
        if not wandb_cfg.get("group"):
            wandb_cfg.group = group
        tags = {*(wandb_cfg.get("tags") or []), "evaluate", f"resolution:{resolution}"}
        wandb_cfg.tags = sorted(tags | ({"tta"} if tta else set()))
        wandb_cfg.log_model = False  # an evaluation saves no checkpoint


def run_config(
    cfg: DictConfig, protocol: str, train_dir: Path | None, train_status: dict[str, Any]
) -> dict[str, Any]:
    """What every logger records of an evaluation: the composed config, the protocol, and the
    training run scored (`train_run_id`: its W&B id, None when it logged none)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return {
        **config,
        "protocol": protocol,
        "train_run_id": train_status.get("wandb_id") or None,
        "train_run_dir": str(train_dir) if train_dir else None,
    }


def log_wandb_predictions(trainer: L.Trainer, module: SegModule, test_set: PetTrimaps) -> None:
    """To W&B, `test/predictions`: OVERLAY_IMAGES test images (spread over breeds) as the network
    saw them, with their true and predicted masks; predicted by `trainer` (its device, precision
    and the TTA when on). The confusion matrix went with the test scores (confusion.py)."""
    indices = spread_over_breeds(test_set.names, OVERLAY_IMAGES)
    items = [test_set[i] for i in indices]
    loader = DataLoader(items, batch_size=len(items))
    preds = torch.cat(trainer.predict(module, dataloaders=loader)).cpu().numpy()  # (N, H, W)
    rgbs = [to_rgb(item["image"].float().numpy()) for item in items]
    masks = np.stack([item["mask"].numpy() for item in items])
    captions = [f"test {test_set.names[i]} ({preds.shape[2]}x{preds.shape[1]} px)" for i in indices]
    overlays = wandb_overlays(rgbs, masks, preds, module.class_names, captions)
    log_to_wandb(trainer, {"test/predictions": overlays})


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        metrics = evaluate(cfg)
    except PetsegError as e:
        print_user_error(e, log)
        raise SystemExit(1) from None
    print(f"protocol: {protocol_line(cfg)}")
    width = max(map(len, metrics), default=0)
    for name, value in sorted(metrics.items()):
        print(f"{name:<{width}}  {value:.6f}")


if __name__ == "__main__":
    main()
