"""Article presets and debug modes: each composes, instantiates, and a debug run goes end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from petseg.data.transforms import train_pipeline
from petseg.train import train

from conftest import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


def test_article_presets_are_all_there() -> None:
    expected = {"segnet_20ep", "segnet_dsc_20ep", "unet_100ep", "unet_256px", "vit_50ep"}
    assert expected <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name: str, cfg_factory) -> None:
    cfg = cfg_factory(f"experiment={name}")
    assert cfg.model._target_.startswith("petseg.models.")
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate(cfg.optimizer)(params=params)
    if cfg.scheduler:
        instantiate(cfg.scheduler)(optimizer=optimizer)
    # Every augmentation of the preset keeps mask labels exact (e.g. rotation fills background).
    pipeline = train_pipeline(64, instantiate(cfg.data.train_transforms))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    mask = np.zeros((80, 96), np.uint8)
    mask[20:60, 30:70] = 2
    for _ in range(10):
        out = pipeline(image=image, mask=mask)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2}


def test_rotation_preset_fills_with_background(cfg_factory) -> None:
    cfg = cfg_factory("experiment=unet_100ep")
    rotate = [t for t in cfg.data.train_transforms if t._target_.endswith("Rotate")]
    assert rotate and rotate[0].fill_mask == 1  # label 1 = background


@pytest.mark.parametrize("name", DEBUG)
def test_debug_mode_composes(name: str, cfg_factory) -> None:
    cfg = cfg_factory(f"debug={name}")
    instantiate(cfg.trainer, logger=False)


def test_debug_fdr_runs_end_to_end(cfg_factory) -> None:
    cfg = cfg_factory(
        "debug=fdr",
        "data=synthetic",
        "data.synthetic.num_trainval=6",
        "data.synthetic.num_test=2",
        "data.synthetic.size=32",
        "data.image_size=32",
        "model=segnet_dsc",
    )
    metrics = train(cfg)
    assert "train/loss" in metrics and "test/miou" in metrics
