"""Article presets and debug modes: each composes, instantiates, and a debug run goes end to end."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hydra.utils import instantiate

from petseg.data.transforms import train_pipeline
from petseg.train import train

from conftest import CONF_DIR, TINY, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml"))


def test_article_presets_are_all_there() -> None:
    expected = {"segnet_20ep", "segnet_dsc_20ep", "unet_100ep", "unet_256px", "vit_50ep"}
    expected |= {"article_segnet", "article_segnet_dsc", "article_vit", "article_segnet_iou"}
    assert expected <= set(EXPERIMENTS)


# The notebooks' recipes (dhruvbird/ml-notebooks, pets_segmentation/): model, Adam lr, StepLR
# (step_size, gamma) or None, epochs.
ARTICLE_RUNS = {
    "article_segnet": ("petseg.models.segnet.SegNet", 1e-3, (7, 0.7), 20),
    "article_segnet_dsc": ("petseg.models.segnet.SegNet", 1e-3, None, 20),
    "article_vit": ("petseg.models.vit.ViTSeg", 4e-4, (12, 0.8), 50),
    "article_segnet_iou": ("petseg.models.segnet.SegNet", 1e-3, (7, 0.7), 20),
}
ALIASES = {"segnet_20ep": "article_segnet", "segnet_dsc_20ep": "article_segnet_dsc"}
ALIASES["vit_50ep"] = "article_vit"


@pytest.mark.parametrize("name", sorted(ARTICLE_RUNS))
def test_article_preset_is_the_notebooks_recipe(name: str) -> None:
    """Resolved as `python -m petseg.train experiment=<name>` composes it (no test overrides)."""
    cfg = compose_config([f"experiment={name}"])
    model, lr, steplr, epochs = ARTICLE_RUNS[name]
    assert cfg.model._target_ == model
    assert cfg.model.get("conv", "standard") == (
        "dsc" if name == "article_segnet_dsc" else "standard"
    )
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 0
    if steplr is None:
        assert not cfg.scheduler
    else:
        assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
        assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == steplr
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.precision == "32-true"
    if name == "article_segnet_iou":  # -log of the article's soft IoU
        assert cfg.loss._target_ == "petseg.losses.SoftIoULoss"
        assert (cfg.loss.form, cfg.loss.average, cfg.loss.smooth) == ("neg_log", "image", 0.001)
    else:
        assert cfg.loss._target_ == "petseg.losses.CrossEntropyLoss"
        assert cfg.loss.label_smoothing == 0 and "weight" not in cfg.loss
    data = cfg.data
    assert data.image_size == 128 and data.image_interpolation == "nearest" and not data.cache
    assert data.batch_size == 64 and data.eval_batch_size == 21 and data.eval_shuffle
    assert not data.drop_last  # the notebooks' DataLoader(shuffle=True) keeps the last batch
    assert data.val_fraction == 0  # no validation split: val is the test split
    assert cfg.metrics.article_protocol  # test images through the training transforms
    assert cfg.callbacks.model_checkpoint.monitor is None  # the last epoch's model is tested
    flip, jitter = instantiate(data.train_transforms)
    assert isinstance(flip, A.HorizontalFlip) and flip.p == 0.5
    # torchvision ColorJitter(contrast=0.3): contrast factor in [0.7, 1.3], nothing else, always.
    assert isinstance(jitter, A.ColorJitter) and jitter.p == 1.0
    assert jitter.contrast == pytest.approx((0.7, 1.3))
    assert jitter.brightness == (1.0, 1.0) and jitter.saturation == (1.0, 1.0)
    assert tuple(jitter.hue) == (0.0, 0.0)


def test_article_color_jitter_is_torchvisions_contrast() -> None:
    """At the same factor, the preset's jitter is torchvision's adjust_contrast on [0, 1] floats
    (to uint8 rounding), whatever order albumentations draws for its identity transforms."""
    cfg = compose_config(["experiment=article_segnet"])
    jitter = instantiate(cfg.data.train_transforms)[1]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for factor in (0.7, 1.0, 1.3):
        ref = TF.adjust_contrast(torch.from_numpy(image).permute(2, 0, 1).float() / 255, factor)
        ref = ref.permute(1, 2, 0).numpy() * 255
        for order in ([0, 1, 2, 3], [3, 2, 1, 0]):
            params = {"brightness": 1.0, "saturation": 1.0, "hue": 0.0, "order": order}
            out = jitter.apply(image, contrast=factor, **params).astype(np.float64)
            assert np.abs(out - ref).max() <= 1.0


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_old_article_names_are_aliases(alias: str) -> None:
    assert compose_config([f"experiment={alias}"]) == compose_config(
        [f"experiment={ALIASES[alias]}"]
    )


def test_article_segnet_dsc_trains_and_tests_end_to_end(cfg_factory) -> None:
    """The preset on synthetic data: train on all of trainval, val = test, the three figures."""
    cfg = cfg_factory(
        "experiment=article_segnet_dsc",
        *TINY,
        "data.batch_size=4",
        "data.eval_batch_size=3",
        "trainer.max_epochs=1",
        "logger=csv",
    )
    metrics = train(cfg)
    for name in ("article_pixel_acc", "article_iou_acc", "article_custom_iou"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
        assert f"val/{name}" in metrics


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
