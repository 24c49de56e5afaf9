"""Sweeps and clusters: the Optuna preset, the gpu_pool and SLURM launchers, trainer=ddp.

GPU assignment is tested without a GPU (CUDA_VISIBLE_DEVICES is only a string until CUDA starts);
the search, the pool launcher and a 2-process DDP run (gloo) run for real on the CPU.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petseg import launch
from petseg.errors import ConfigError

from conftest import CONF_DIR, run_train, sweep_jobs
from conftest import TINY as TINY_RUN

TINY = [
    *TINY_RUN,  # synthetic 8 + 4 images, 32 px, segnet_dsc
    "data.batch_size=2",
    "data.num_workers=0",
    "data.pin_memory=false",
    "trainer.max_epochs=1",
    "trainer.precision=32",
]


def hydra_compose(*overrides: str) -> DictConfig:
    """The config with its `hydra` node (sweeper, launcher, runtime choices), as the CLI has it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# --- every new config composes -----------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*")))
def test_hparams_search_presets_compose(option: str) -> None:
    cfg = hydra_compose(f"hparams_search={option}")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # no -m needed
    assert cfg.hydra.sweeper.params, "a search preset searches something"


@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2 + SQLAlchemy 1.4
def test_optuna_preset_maximises_val_miou_with_seeded_tpe(monkeypatch) -> None:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    monkeypatch.delenv("PETSEG_NUM_GPUS", raising=False)
    cfg = hydra_compose("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed is not None
    assert sweeper.n_jobs == 1  # the basic launcher: one trial at a time, TPE sees each result
    params = dict(sweeper.params)
    assert params["optimizer.lr"].startswith("tag(log, interval(")
    assert params["optimizer.weight_decay"].startswith("tag(log, interval(")
    losses = params["loss"].removeprefix("choice(").removesuffix(")").split(", ")
    assert set(losses) <= {p.stem for p in (CONF_DIR / "loss").glob("*.yaml")}
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert isinstance(instantiate(sweeper), OptunaSweeper)
    # With an experiment preset too, the search still runs (and keeps its optimizer).
    assert hydra_compose("experiment=segnet_20ep", "hparams_search=optuna").optimizer.lr > 0


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "hydra/launcher").glob("*")))
def test_launchers_compose_and_instantiate(option: str) -> None:
    cfg = hydra_compose(f"hydra/launcher={option}")
    assert cfg.hydra.runtime.choices["hydra/launcher"] == option
    assert type(instantiate(cfg.hydra.launcher)).__name__ in ("JoblibLauncher", "SlurmLauncher")


def test_gpu_pool_runs_one_job_per_gpu(monkeypatch) -> None:
    monkeypatch.delenv("PETSEG_NUM_GPUS", raising=False)
    cfg = hydra_compose("hydra/launcher=gpu_pool", "hparams_search=optuna")
    assert cfg.hydra.launcher.n_jobs == 1  # no GPUs declared: one job after another
    assert cfg.hydra.launcher.prefer == "processes"
    monkeypatch.setenv("PETSEG_NUM_GPUS", "4")
    cfg = hydra_compose("hydra/launcher=gpu_pool", "hparams_search=optuna")
    assert cfg.hydra.launcher.n_jobs == 4 and cfg.hydra.sweeper.n_jobs == 4  # 4 trials at once


def test_slurm_launchers_compose() -> None:
    cfg = hydra_compose("hydra/launcher=slurm", "trainer=ddp")
    slurm = cfg.hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.tasks_per_node == slurm.gpus_per_node == 1 and slurm.timeout_min > 0
    assert {"partition", "mem_gb", "cpus_per_task", "nodes"} <= set(slurm)
    plain = hydra_compose("hydra/launcher=submitit_slurm").hydra.launcher  # the plugin's own
    assert plain._target_ == slurm._target_


def test_ddp_trainer_composes_and_instantiates(cfg_factory) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    cfg = hydra_compose("trainer=ddp")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    assert cfg.trainer.num_nodes == 1 and cfg.trainer.accelerator == "gpu"
    cfg = cfg_factory("trainer=ddp", "trainer.sync_batchnorm=false")  # CPU, 1 device
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy, DDPStrategy)


# --- GPU assignment, without a GPU ------------------------------------------------------------


@pytest.fixture
def fresh_pool() -> Iterator[None]:
    """Each test is a new worker process: no GPU slot claimed yet."""
    launch._claimed = None
    yield
    if launch._claimed is not None:
        launch._claimed[1].close()
    launch._claimed = None


@pytest.mark.parametrize(
    ("job", "gpus", "expected"),
    [
        (0, ["0", "1", "2", "3"], "0"),
        (5, ["0", "1", "2", "3"], "1"),
        (7, ["0", "1"], "1"),
        (3, ["6"], "6"),
        (2, ["GPU-aa", "GPU-bb", "MIG-cc"], "MIG-cc"),  # ids as CUDA_VISIBLE_DEVICES lists them
        (4, [], None),  # no GPUs: nothing to choose
    ],
)
def test_gpu_for_job_is_round_robin(job: int, gpus: list[str], expected: str | None) -> None:
    assert launch.gpu_for_job(job, gpus) == expected


def test_visible_gpus_from_env_or_count(monkeypatch) -> None:
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 1,3"}) == ["0", "1", "3"]
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]  # CUDA stops at -1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert launch.visible_gpus({}) == ["0", "1", "2"]


@pytest.mark.usefixtures("fresh_pool")
def test_pool_sets_the_jobs_gpu_and_the_worker_keeps_it(tmp_path: Path) -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert launch.take_pool_gpu(5, 4, tmp_path, env) == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    # The next job in this process stays on GPU 1: CUDA there already reads it.
    assert launch.take_pool_gpu(6, 4, tmp_path, env) == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.usefixtures("fresh_pool")
def test_pool_skips_a_slot_another_worker_holds(tmp_path: Path) -> None:
    other = launch.claim_slot(1, 4, tmp_path)  # a live worker on slot 1
    assert other is not None and other[0] == 1
    try:
        env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
        assert launch.take_pool_gpu(5, 4, tmp_path, env) == "2"  # wants 1, takes the next
    finally:
        other[1].close()


@pytest.mark.usefixtures("fresh_pool")
@pytest.mark.parametrize(("job", "n_jobs", "expected"), [(3, 2, "1"), (6, 8, "2"), (5, 0, "1")])
def test_pool_size_follows_n_jobs(job: int, n_jobs: int, expected: str, tmp_path: Path) -> None:
    # n_jobs=2: GPUs 0 and 1 of four; n_jobs=8: two jobs on each GPU; 0: every GPU.
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert launch.take_pool_gpu(job, n_jobs, tmp_path, env) == expected


@pytest.mark.usefixtures("fresh_pool")
def test_pool_without_gpus_sets_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    env: dict[str, str] = {}
    assert launch.take_pool_gpu(3, 1, tmp_path / "locks", env) is None
    assert env == {} and not (tmp_path / "locks").exists()
    env = {"CUDA_VISIBLE_DEVICES": ""}
    assert launch.take_pool_gpu(3, 1, tmp_path / "locks", env) is None
    assert env == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture
def fake_hydra() -> Iterator[None]:
    yield
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


@pytest.mark.usefixtures("fresh_pool", "fake_hydra")
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["hydra/launcher=gpu_pool", "hydra.mode=MULTIRUN"], "3"),  # job 3 of 4 -> GPU 3
        (["hydra/launcher=gpu_pool"], "0,1,2,3"),  # a single run: the launcher is not used
        (["hydra.mode=MULTIRUN"], "0,1,2,3"),  # the basic launcher: jobs one after another
    ],
)
def test_setup_devices_in_a_hydra_job(overrides, expected, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PETSEG_NUM_GPUS", "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cfg = hydra_compose(
        *overrides, "hydra.job.num=3", f"hydra.sweep.dir={tmp_path}", "trainer.accelerator=cpu"
    )
    HydraConfig.instance().set_config(cfg)
    launch.setup_devices(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_setup_devices_outside_hydra_changes_nothing(cfg_factory, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    launch.setup_devices(cfg_factory("trainer=ddp", "trainer.sync_batchnorm=false"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


# --- DDP launch checks -------------------------------------------------------------------------


def ddp_trainer(**overrides) -> DictConfig:
    node = {"strategy": "ddp", "accelerator": "gpu", "devices": 2, "sync_batchnorm": True}
    return OmegaConf.create({**node, **overrides})


@pytest.fixture
def no_cluster(monkeypatch) -> None:
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "LOCAL_RANK", "RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_cluster")
def test_ddp_in_a_local_multirun_fails_early_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"restart the sweep.*hydra/launcher=slurm"):
        launch.check_ddp(ddp_trainer(), multirun=True)
    with pytest.raises(ConfigError, match=r"trainer\.strategy=ddp with 2 devices"):
        launch.check_ddp(ddp_trainer(devices=[0, 1]), multirun=True)
    launch.check_ddp(ddp_trainer(), multirun=False)  # a single run: fine
    launch.check_ddp(ddp_trainer(devices=1), multirun=True)  # one process: nothing to re-run
    launch.check_ddp(ddp_trainer(strategy="ddp_spawn"), multirun=True)  # spawns, re-runs nothing


@pytest.mark.usefixtures("no_cluster")
def test_ddp_in_a_multirun_is_fine_where_the_cluster_starts_the_ranks(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "petseg-train")
    launch.check_ddp(ddp_trainer(), multirun=True)


@pytest.mark.usefixtures("no_cluster")
def test_sync_batchnorm_on_cpu_fails_early() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.sync_batchnorm=false"):
        launch.check_ddp(ddp_trainer(accelerator="cpu"), multirun=False)
    launch.check_ddp(ddp_trainer(accelerator="cpu", sync_batchnorm=False), multirun=False)


# --- real runs (subprocesses) ------------------------------------------------------------------


@pytest.mark.slow
def test_optuna_search_runs_trials_and_returns_val_miou(tmp_path: Path) -> None:
    proc = run_train(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        "test=false",
        "trainer.accelerator=cpu",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sweep_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1"]
    best = []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file()
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed"
        best.append(status["metrics"]["val/miou_best"])
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        lr = next(float(o.split("=")[1]) for o in overrides if o.startswith("optimizer.lr="))
        assert 1e-4 <= lr <= 1e-2
        assert any(o.startswith("loss=") for o in overrides)
    results = OmegaConf.load(jobs[0].parent / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(best))  # the objective is val/miou_best
    assert set(results.best_params) == {"optimizer.lr", "optimizer.weight_decay", "loss"}


@pytest.mark.slow
def test_gpu_pool_runs_trials_in_parallel_and_survives_a_failed_one(tmp_path: Path) -> None:
    # Two joblib workers at once; no GPU here, so neither job touches CUDA_VISIBLE_DEVICES. With
    # the seeded sampler, trial 0 draws val_fraction=2.0 (fails), trial 1 draws 0.25.
    proc = run_train(
        "hparams_search=optuna",
        "hydra/launcher=gpu_pool",
        "hydra.sweeper.n_trials=2",
        "data.val_fraction=choice(2.0, 0.25)",
        *TINY,
        "test=false",
        "trainer.accelerator=cpu",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
        PETSEG_NUM_GPUS="2",
        CUDA_VISIBLE_DEVICES="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in log and "is launching 2 jobs" in log  # both at once
    states = {}
    for job in sweep_jobs(tmp_path):
        states[job.name] = json.loads((job / "status.json").read_text())["status"]
        assert "Sweep job" not in (job / "train.log").read_text()  # no GPU was assigned
    assert states == {"0": "failed", "1": "completed"}
    results = OmegaConf.load(next(tmp_path.glob("outputs/multirun/*/*/optimization_results.yaml")))
    assert results.best_params["data.val_fraction"] == 0.25


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_from_rank_zero_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_train(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",  # torch's SyncBatchNorm is GPU only
        *TINY,
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        WANDB_MODE="offline",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr  # rank 1 joined
    # Both ranks used the one run folder; only rank 0 wrote logs, config and checkpoints.
    assert not (tmp_path / "outputs").exists()
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r["val/miou"]) == 1  # one epoch, one row
    assert sum(1 for r in rows if r["test/miou"]) == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and "val/miou_best" in status["metrics"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1
    assert not list(run_dir.rglob("*.tmp"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_gpu_pool_jobs_load_with_dataloader_workers(tmp_path: Path) -> None:
    """Inside a joblib (loky) worker the default start method is loky's, which DataLoader workers
    could not start with: the job failed with "'Process' object has no attribute 'env'"."""
    proc = run_train(
        "-m",
        "hydra/launcher=gpu_pool",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *TINY,
        "data.num_workers=1",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
        "trainer.accelerator=cpu",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
        CUDA_VISIBLE_DEVICES="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pickle error" not in proc.stderr
    states = [
        json.loads((job / "status.json").read_text())["status"] for job in sweep_jobs(tmp_path)
    ]
    assert states == ["completed", "completed"]
