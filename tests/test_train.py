"""The composed config, SegModule and train(cfg) end to end, plus the CLI's error lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from petseg.data.datamodule import PetDataModule
from petseg.module import SegModule
from petseg.train import name_wandb_run, train

from conftest import CONF_DIR, TINY, compose_config, run_train, sweep_jobs


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["data", "optimizer", "scheduler", "trainer", "logger", "callbacks"]
)
def test_every_group_option_composes_and_instantiates(group: str, cfg_factory) -> None:
    for option in group_options(group):
        cfg = cfg_factory(f"{group}={option}")
        node = cfg.get(group)
        if group in ("optimizer", "scheduler") and node:
            opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
            if group == "scheduler":
                instantiate(node)(optimizer=opt)
        elif group in ("logger", "callbacks") and node:
            for name, sub in node.items():
                if name == "wandb":  # building it is cheap, starting a run is not
                    assert sub._target_.endswith("WandbLogger")
                    continue
                instantiate(sub)
        elif group == "trainer":
            trainer = instantiate(node, logger=False)
            assert trainer.max_epochs == cfg.trainer.max_epochs
        elif group == "data":
            assert isinstance(instantiate(node), PetDataModule)


def test_defaults_match_the_documented_run() -> None:
    cfg = compose_config()
    assert cfg.model._target_ == "petseg.models.segnet.SegNet"
    assert cfg.loss._target_.endswith("CrossEntropyLoss")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.trainer.max_epochs == 20 and cfg.data.image_size == 128
    assert set(cfg.logger) == {"csv", "wandb"} and cfg.logger.wandb.offline is True
    assert cfg.callbacks.model_checkpoint.monitor == "val/miou"


@pytest.mark.slow
def test_segnet_overfits_one_synthetic_batch(tiny_pets: Path) -> None:
    torch.manual_seed(0)
    dm = PetDataModule(tiny_pets, download=False, image_size=32, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    cfg = compose_config()
    module = SegModule(cfg.model, cfg.loss, cfg.optimizer, class_names=cfg.class_names)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = module.criterion(module(batch["image"]), batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_train_end_to_end_writes_run_and_reloads(cfg_factory, tmp_path: Path) -> None:
    cfg = cfg_factory(*TINY, "trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    metrics = train(cfg)
    for key in (
        "val/miou",
        "val/pixel_acc",
        "val/iou_pet",
        "val/iou_background",
        "val/iou_border",
        "test/miou",
        "test/pixel_acc",
        "model/params",
    ):
        assert key in metrics, key
    assert 0.0 <= metrics["test/pixel_acc"] <= 1.0
    net = instantiate(cfg.model)
    assert metrics["model/params"] == sum(p.numel() for p in net.parameters())

    run = Path(cfg.paths.output_dir)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train/loss", "val/loss", "val/miou", "test/miou"} <= set(rows[0])
    assert sum(1 for r in rows if r["val/miou"]) == 2  # one per epoch
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1

    # Self-describing checkpoint: rebuilt with no Hydra config, same outputs.
    reloaded = SegModule.load_from_checkpoint(last, map_location="cpu").eval()
    assert reloaded.hparams.net["_target_"] == "petseg.models.segnet.SegNet"
    fresh = SegModule(cfg.model, cfg.loss, cfg.optimizer).eval()
    x = torch.rand(1, 3, 32, 32)
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    fresh.load_state_dict(state)
    torch.testing.assert_close(reloaded(x), fresh(x))


def test_wandb_offline_run_has_metrics_and_no_secret(cfg_factory, monkeypatch) -> None:
    secret = "petseg-fake-key-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = cfg_factory(*TINY, "trainer.max_epochs=1", "test=false")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), runs
    assert "val/miou" in metrics
    import wandb

    assert wandb.run is None  # finished, so the next multirun job gets its own run
    # The API key never lands in configs, logs, checkpoints or W&B files.
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaked = [p for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_cli_unknown_model_lists_choices(tmp_path: Path) -> None:
    proc = run_train("model=nope", cwd=tmp_path)
    assert proc.returncode != 0
    assert "model/nope" in proc.stderr and "segnet_dsc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_dataset_is_one_line(tmp_path: Path) -> None:
    proc = run_train(f"data.root={tmp_path}/none", "data.download=false", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.root=" in errors[0] and "data.download=true" in errors[0]
    assert "Traceback" not in proc.stderr


def test_cli_bad_trimaps_stop_with_one_error_line_and_report(
    tiny_pets: Path, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    bad = tiny_pets / "oxford-iiit-pet" / "annotations" / "trimaps"
    for png in bad.glob("*.png"):
        Image.fromarray(np.full((48, 48), 7, np.uint8), mode="L").save(png)
    proc = run_train(
        f"data.root={tiny_pets}",
        "data.download=false",
        "data.image_size=32",
        "data.num_workers=1",
        "model=segnet_dsc",
        "trainer.max_epochs=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad files in the train split" in errors[0], proc.stderr[-2000:]
    assert "synthetic_1.png: trimap-values: values [7]" in proc.stderr  # the check's report
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_multirun_gives_each_job_its_folder(tmp_path: Path) -> None:
    proc = run_train(
        "-m",
        "model=segnet,segnet_dsc",
        *TINY[:-1],
        "trainer.max_epochs=1",
        "test=false",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sweep_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file()
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert any(o.startswith("model=") for o in overrides)


def test_weight_auto_comes_from_training_pixel_counts(cfg_factory) -> None:
    from petseg.train import resolve_auto_weights

    cfg = cfg_factory(*TINY, "loss=weighted_ce")
    datamodule = instantiate(cfg.data)
    counts = datamodule.class_pixel_counts()
    assert counts.sum() == 7 * 48 * 48  # 7 training images of 48x48 (1 of 8 goes to val)
    resolve_auto_weights(cfg, datamodule)
    weights = list(cfg.loss.weight)
    assert len(weights) == 3 and abs(sum(weights) / 3 - 1) < 1e-4
    assert weights[2] > weights[0] > weights[1]  # border rarest, background most common
    assert instantiate(cfg.loss).weight.tolist() == pytest.approx(weights)


@pytest.mark.slow
def test_cli_failed_sweep_job_does_not_stop_the_others(tmp_path: Path) -> None:
    proc = run_train(
        "-m",
        "data.val_fraction=2.0,0.2",
        *TINY,
        "trainer.max_epochs=1",
        "test=false",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 1  # the sweep reports its failure at the end
    assert "error: data.val_fraction must be in (0, 1), got 2.0" in proc.stderr
    failed, done = sweep_jobs(tmp_path)
    failed_status = json.loads((failed / "status.json").read_text())
    assert failed_status["status"] == "failed" and "val_fraction" in failed_status["error"]
    done_status = json.loads((done / "status.json").read_text())
    assert done_status["status"] == "completed" and "val/miou" in done_status["metrics"]
    assert (done / "checkpoints" / "last.ckpt").is_file()


def test_wandb_run_named_from_hydra_choices(cfg_factory) -> None:

    cfg = cfg_factory("loss=dice")
    name_wandb_run(cfg)  # outside a Hydra app: names come from the targets
    assert cfg.logger.wandb.name == "segnet-diceloss"
    assert {"model:segnet", "loss:diceloss"} <= set(cfg.logger.wandb.tags)
    cfg = cfg_factory("logger.wandb.name=mine")
    name_wandb_run(cfg)
    assert cfg.logger.wandb.name == "mine" and len(cfg.logger.wandb.id) == 8


def fake_hydra(sweep_dir: str, num: int = 0, debug: str | None = None) -> SimpleNamespace:
    """The parts of Hydra's runtime config name_wandb_run reads, for a multirun job."""
    choices = {"model": "vit_small", "loss": "dice", "debug": debug}
    return SimpleNamespace(
        mode="RunMode.MULTIRUN",
        sweep=SimpleNamespace(dir=sweep_dir),
        job=SimpleNamespace(num=num),
        runtime=SimpleNamespace(choices=choices),
        overrides=SimpleNamespace(task=["model=vit_small"]),
    )


def test_wandb_groups_of_sweeps_on_different_days_differ(cfg_factory, monkeypatch) -> None:
    import petseg.train

    groups = []
    for day in ("2026-12-01", "2026-12-02"):  # same time of day: the old group was HH-MM-SS only
        hydra = fake_hydra(f"outputs/multirun/{day}/10-00-00", num=3)
        monkeypatch.setattr(petseg.train, "hydra_runtime", lambda hydra=hydra: hydra)
        cfg = cfg_factory("tags=[baseline]")
        name_wandb_run(cfg)
        groups.append(cfg.logger.wandb.group)
        assert cfg.logger.wandb.name == "vit_small-dice-3" and cfg.logger.wandb.job_type == "train"
        assert {"baseline", "model:vit_small", "loss:dice"} <= set(cfg.logger.wandb.tags)
    assert groups == ["2026-12-01_10-00-00", "2026-12-02_10-00-00"]

    hydra = fake_hydra("outputs/multirun/2026-12-02/10-00-00", debug="fdr")
    monkeypatch.setattr(petseg.train, "hydra_runtime", lambda: hydra)
    cfg = cfg_factory("logger.wandb.offline=false")
    name_wandb_run(cfg)
    assert cfg.logger.wandb.job_type == "debug" and "debug" in cfg.logger.wandb.tags
    assert cfg.logger.wandb.offline is True  # a debug run never goes online


def test_tensorboard_logger_writes_val_miou(cfg_factory) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_factory(*TINY, "trainer.max_epochs=1", "test=false", "logger=tensorboard")
    train(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard")).Reload()
    assert "val/miou" in events.Tags()["scalars"]
    assert (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file()  # report still reads it


def test_mlflow_logger_writes_a_local_run_with_val_miou(cfg_factory, tmp_path: Path) -> None:
    import mlflow

    cfg = cfg_factory(*TINY, "trainer.max_epochs=1", "test=false", "logger=mlflow", "tags=[t1]")
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    train(cfg)
    client = mlflow.MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("petseg").experiment_id])
    assert "val/miou" in run.data.metrics and "t1" in run.data.params["tags"]


def test_early_stopping_ends_a_fit_whose_val_miou_stalls(cfg_factory) -> None:
    cfg = cfg_factory(
        *TINY,
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1.0",
        "trainer.max_epochs=5",
        "test=false",
    )  # no epoch can gain 1.0 mIoU: the fit stops after epoch 1
    train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r["val/miou"]}
    assert epochs == {"0", "1"}


def test_wandb_config_is_the_composed_config_once_with_choices(cfg_factory, monkeypatch) -> None:
    import wandb

    import petseg.train

    monkeypatch.setenv("WANDB_MODE", "offline")
    hydra = fake_hydra("outputs/multirun/2026-12-02/10-00-00")
    hydra.runtime.choices = {"model": "segnet_dsc", "loss": "ce", "data": "synthetic"}
    monkeypatch.setattr(petseg.train, "hydra_runtime", lambda: hydra)
    seen: dict = {}
    real_finish = petseg.train.finish_wandb

    def snapshot_then_finish(exit_code: int = 0) -> None:  # the run's config as W&B holds it
        seen.update(wandb.run.config.as_dict())
        real_finish(exit_code)

    monkeypatch.setattr(petseg.train, "finish_wandb", snapshot_then_finish)
    train(cfg_factory(*TINY, "trainer.max_epochs=1", "test=false"))
    assert seen["choices"]["model"] == "segnet_dsc" and seen["overrides"] == ["model=vit_small"]
    assert seen["model"]["_target_"] == "petseg.models.segnet.SegNet"
    assert "config" not in seen and "net" not in seen  # once: not nested, not repeated
