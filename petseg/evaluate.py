"""`python -m petseg.evaluate ckpt_path=... [overrides]`: a checkpoint on the official test split.

Prints the protocol and every `test/*` metric and writes them as JSON to `<run dir>/metrics.json`
(and to `output=` when given, `"protocol"` beside the metrics); the confusion matrix goes to
`<run dir>/confusion/`. `resolution=original` (the default) scores each image at its own size
against its untouched full-size trimap (`petseg.fullsize`); `resolution=train` scores at
`data.image_size` as training's `test/*` metrics do. `metrics.article_protocol=true` evaluates as
the article did (see `petseg.metrics.article_protocol`), at the training resolution only.
`tta.hflip=true` / `tta.scales=[...]` (`petseg.tta`) score the softmax averaged over flips and
scales, at either resolution; `test/loss` is then the loss of the averaged prediction.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from petseg.build import build, build_trainer, to_floats
from petseg.checkpoint import load_module
from petseg.config import CONF_DIR
from petseg.errors import ConfigError, PetsegError, print_user_error
from petseg.fullsize import FullSizeScorer, full_size_loader
from petseg.metrics import article_protocol
from petseg.tta import apply_tta, tta_options

log = logging.getLogger("petseg.evaluate")

# What each `resolution=` scores, as printed and saved beside the metrics.
PROTOCOLS = {
    "original": "resolution=original: each image at its own size, logits resized bilinearly to "
    "its full-size trimap, labels untouched",
    "train": "resolution=train: at data.image_size, trimaps resized (nearest) like the images, "
    "as training's test/* metrics",
}
RESOLUTIONS = tuple(PROTOCOLS)


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
    """Test `cfg.ckpt_path` on the test split of `cfg.data`; returns the `test/*` metrics."""
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
    trainer = build_trainer(cfg, logger=False, enable_checkpointing=False)
    if resolution == "train":
        trainer.test(module, datamodule=datamodule, verbose=False)
    else:
        datamodule.prepare_data()
        datamodule.setup("test")
        dm = datamodule
        loader = full_size_loader(dm.test_set, dm.batch_size, dm.num_workers, dm.pin_memory)
        trainer.test(FullSizeScorer(module), dataloaders=loader, verbose=False)
    metrics = to_floats(trainer.callback_metrics)
    written = [write_json(metrics, Path(cfg.paths.output_dir) / "metrics.json", protocol)]
    if cfg.get("output"):
        written.append(write_json(metrics, cfg.output, protocol))
    log.info("Protocol: %s", protocol)
    log.info("Metrics written to %s", ", ".join(str(p) for p in written))
    return metrics


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
