"""Wrong configs fail before any data loads, with one line naming the key and the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from petseg.errors import ConfigError
from petseg.train import train

from conftest import TINY


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", r"optimizer\.lr=-0\.1 must be > 0"),
        ("optimizer.weight_decay=-1", r"optimizer\.weight_decay=-1 must be >= 0"),
        (
            "data.image_size=40",
            r"data\.image_size=40 is not a multiple of 16.*use data\.image_size=32 or 48",
        ),
        ("model=segformer", r"data\.image_size=48 is not a multiple of 32.*SegFormer"),
        ("loss.ignore_index=3", r"loss\.ignore_index=3 is out of range"),
        ("ckpt_path=/no/such.ckpt", r"ckpt_path=/no/such\.ckpt: no such checkpoint file"),
        ("ckpt_path=last", r"ckpt_path=last: no checkpoints/last\.ckpt under paths\.log_dir"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs=0 must be >= 1"),
        ("data.val_fraction=1.5", r"data\.val_fraction must be in \(0, 1\)"),
        ("model.compile=indcutor", r"model\.compile=indcutor is not a torch\.compile backend"),
        ("model.channels_last=2", r"model\.channels_last=2 must be true or false"),
    ],
)
def test_bad_value_fails_before_data_loads(override: str, message: str, cfg_factory, tmp_path):
    extra = ["data.image_size=48"] if override == "model=segformer" else []
    cfg = cfg_factory(*TINY, *extra, override)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "data" / "synthetic").exists()  # the dataset was never even made


def test_ignoring_a_real_class_is_allowed(cfg_factory) -> None:
    from petseg.config import validate

    validate(cfg_factory(*TINY, "loss.ignore_index=2"))  # leave the border out of the loss


def test_resume_last_continues_run_and_wandb_id(cfg_factory, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = cfg_factory(*TINY, "trainer.max_epochs=1", "test=false")
    first.paths.output_dir = str(Path(first.paths.log_dir) / "first")
    train(first)
    first_status = json.loads((Path(first.paths.output_dir) / "status.json").read_text())

    second = cfg_factory(*TINY, "trainer.max_epochs=2", "test=false", "ckpt_path=last")
    second.paths.output_dir = str(Path(first.paths.log_dir) / "resumed")
    train(second)
    assert second.ckpt_path.endswith("first/checkpoints/last.ckpt")
    assert second.logger.wandb.id == first_status["wandb_id"]
    with (Path(second.paths.output_dir) / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # epoch 0 carried over from the first run's history, epoch 1 trained here: each once
    assert [int(r["epoch"]) for r in rows if r.get("val/miou")] == [0, 1]


def test_nan_loss_stops_with_step_and_keeps_last_good(cfg_factory) -> None:
    from petseg.errors import NonFiniteLossError

    cfg = cfg_factory(*TINY, "optimizer=sgd", "optimizer.lr=1e30", "trainer.max_epochs=3")
    with pytest.raises(NonFiniteLossError, match=r"train/loss is not finite .* at global step \d+"):
        train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert not (ckpts / "interrupted.ckpt").exists()  # NaN weights are not saved as a resume point


def test_seeded_runs_are_repeatable(cfg_factory, tmp_path) -> None:
    results = []
    for name in ("a", "b"):
        cfg = cfg_factory(*TINY, "trainer.max_epochs=2", "test=false", "seed=7")
        cfg.paths.output_dir = str(tmp_path / name)
        results.append(train(cfg))
    for key in ("train/loss", "val/loss", "val/miou", "val/pixel_acc"):
        assert results[0][key] == results[1][key], key


def test_misspelt_key_and_unknown_option_are_refused_by_hydra() -> None:
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from conftest import compose_config

    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_config(["trainer.max_epoch=5"])
    with pytest.raises(MissingConfigException, match="loss/focall"):
        compose_config(["loss=focall"])


def test_wandb_artifacts_only_online(cfg_factory, monkeypatch) -> None:
    from petseg.train import apply_wandb_env

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = cfg_factory()
    apply_wandb_env(cfg)
    assert cfg.logger.wandb.offline and cfg.logger.wandb.log_model is False
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = cfg_factory()
    apply_wandb_env(cfg)
    assert not cfg.logger.wandb.offline and cfg.logger.wandb.log_model is True
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = cfg_factory()
    apply_wandb_env(cfg)
    assert "wandb" not in cfg.logger
