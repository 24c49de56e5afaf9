"""Wrong configs fail before any data loads, with one line naming the key and the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from petseg.errors import ConfigError
from petseg.train import train

from conftest import CONF_DIR, TINY, compose_config, run_train


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
        ("perf.compile=indcutor", r"perf\.compile=indcutor is not a torch\.compile backend"),
        ("perf.channels_last=2", r"perf\.channels_last=2 must be true or false"),
        ("perf.train_metrics_every_n_steps=0", r"train_metrics_every_n_steps=0 must be an integer"),
        ("perf.train_metrics_every_n_steps=1.5", r"train_metrics_every_n_steps=1.5 must be an in"),
        (
            "perf.train_metrics_every_n_steps=true",
            r"train_metrics_every_n_steps=True must be an in",
        ),
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


# --- config and environment mistakes: one line from validate(cfg), before any data loads -------

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.num_classes=2"],
            r"^model\.num_classes=2 but the data has data\.num_classes=3 classes \(pet, "
            r"background, border\): drop the model\.num_classes override",
        ),
        (["optimizer.lr=abc"], r"^optimizer\.lr=abc is not a number: use e\.g\. optimizer\.lr="),
        (["optimizer.weight_decay=abc"], r"^optimizer\.weight_decay=abc is not a number"),
        (["optimizer=sgd", "optimizer.momentum=fast"], r"^optimizer\.momentum=fast is not a num"),
        (["optimizer=sgd", "optimizer.lr=[1,2]"], r"^optimizer\.lr=\[1, 2\] is not a number"),
        (
            ["optimizer=adamw", "+optimizer.betas=[0.9]"],
            r"^optimizer\.betas=\[0\.9\] must be 2 numbers: use e\.g\. optimizer\.betas=\[0\.9,",
        ),
        (
            ["trainer.max_epochs=abc"],
            r"^trainer\.max_epochs=abc is not a whole number: use e\.g\. trainer\.max_epochs=20",
        ),
        (["trainer.max_epochs=2.5"], r"^trainer\.max_epochs=2\.5 is not a whole number"),
        (
            ["trainer.precision=bogus"],
            r"^trainer\.precision=bogus is not a Lightning precision: use one of 32-true, "
            r"16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, transformer-engine, "
            r"transformer-engine-float16, 32, 16, 64, bf16, auto$",
        ),
        (["trainer.precision=true"], r"^trainer\.precision=True is not a Lightning precision"),
        (["data.labels=pets"], r"^data\.labels=pets is not one of trimap, binary$"),
        (["data.border=drop"], r"^data\.border=drop is not one of keep, ignore$"),
        (
            ["data.border=ignore", "loss.ignore_index=1"],
            r"^data\.border=ignore labels border pixels -100, but loss\.ignore_index=1 ignores "
            r"another label: set loss\.ignore_index=-100",
        ),
        (
            ["data.border=ignore", "loss=combo", "loss.losses.dice.ignore_index=0"],
            r"^data\.border=ignore .* but loss\.losses\.dice\.ignore_index=0 ignores",
        ),
        (
            ["data.border=ignore", "metrics.article_protocol=true"],
            r"^metrics\.article_protocol=true .* needs data\.border=keep$",
        ),
        (
            ["data.labels=binary", "loss.ignore_index=2"],
            r"^loss\.ignore_index=2 is out of range: use a class index 0\.\.1 to leave that class "
            r"out of the loss \(0 = pet, 1 = background\)",
        ),
        (
            ["data.labels=binary", "data.num_classes=3"],
            r"^class_names has 2 names but data\.num_classes=3",
        ),
        (
            ["data.labels=binary", "loss=weighted_ce", "loss.weight=[1,1,1]"],
            r"^loss\.weight has 3 values but there are 2 classes \(pet, background\)",
        ),
    ],
)
def test_validate_names_the_key_and_the_fix(overrides, message, cfg_factory) -> None:
    from petseg.config import validate

    with pytest.raises(ConfigError, match=message) as raised:
        validate(cfg_factory(*overrides))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_is_checked_against_the_data_classes(model: str) -> None:
    from petseg.config import validate

    cfg = compose_config([f"model={model}", "trainer.accelerator=cpu"])
    assert cfg.model.num_classes == cfg.data.num_classes == 3  # every model yaml has the key
    with pytest.raises(ConfigError, match=r"^model\.num_classes=2 but the data has"):
        validate(compose_config([f"model={model}", "model.num_classes=2"]))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("choice", ["data.labels=binary", "data.border=ignore"])
def test_every_model_follows_the_labels_choice(model: str, choice: str) -> None:
    from petseg.config import validate

    cfg = compose_config([f"model={model}", "trainer.accelerator=cpu", choice])
    assert cfg.model.num_classes == cfg.data.num_classes == len(cfg.class_names) == 2
    validate(cfg)


@pytest.mark.parametrize("precision", ["32", "16-mixed", "bf16-mixed", "bf16", "64-true"])
def test_lightning_precisions_pass(precision: str, cfg_factory) -> None:
    from petseg.config import validate

    validate(cfg_factory(f"trainer.precision={precision}"))
    validate(cfg_factory("trainer=cpu", "trainer.precision=32"))  # an int, as conf/trainer holds


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (
            ["trainer=gpu"],
            0,
            r"^trainer\.accelerator=gpu but no CUDA device is visible: use trainer=cpu, or "
            r"trainer\.accelerator=auto",
        ),
        (["trainer.accelerator=cuda"], 0, r"^trainer\.accelerator=cuda but no CUDA device"),
        (
            ["trainer=gpu", "trainer.devices=2"],
            1,
            r"^trainer\.devices=2 asks for 2 GPUs but only 1 visible: use trainer\.devices=1 or "
            r"trainer\.devices=auto",
        ),
        (
            ["trainer=gpu", "trainer.devices=[0,1,2]"],
            2,
            r"^trainer\.devices=\[0, 1, 2\] asks for 3",
        ),
    ],
)
def test_gpu_accelerator_needs_the_gpus(overrides, gpus: int, message: str, monkeypatch) -> None:
    """The same on any machine: the CUDA device count is faked."""
    import torch

    from petseg.config import validate

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    validate(compose_config(["trainer=gpu", "trainer.devices=2"]))
    validate(compose_config(["trainer=ddp"]))  # devices: auto, every visible GPU


def test_wrong_model_classes_end_in_one_error_line(tmp_path: Path) -> None:
    """Before: a training step ran, failed with a traceback and left a crash checkpoint."""
    proc = run_train(*TINY, "model.num_classes=2", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: model.num_classes=2 but the data has data.num_classes=3 classes (pet, background, "
        "border): drop the model.num_classes override (it follows data.num_classes), or change "
        "data.num_classes and class_names together"
    ]
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "data").exists()
