"""Shared fixtures: the real Hydra config composed at test size, and tiny on-disk datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from petseg.bench.pipeline import worker_threads

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
PETS_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets-mini"

# A tiny synthetic run (8 + 4 images, 32 px, SegNet-DSC): seconds per epoch on a CPU.
TINY = [
    "data=synthetic",
    "data.synthetic.num_trainval=8",
    "data.synthetic.num_test=4",
    "data.synthetic.size=48",
    "data.image_size=32",
    "trainer.precision=32-true",  # tests train in fp32 on any CPU (auto picks bf16 on some)
    "model=segnet_dsc",  # last: tests sweeping models drop it with TINY[:-1]
]

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The real config, as `python -m petseg.train <overrides>` would compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name=config_name, overrides=overrides or [], return_hydra_config=False
        )


def cli_config(config_name: str, tmp_path: Path, *overrides: str) -> DictConfig:
    """conf/<config_name>.yaml as its CLI would compose it, run folder tmp_path/<config_name>."""
    cfg = compose_config([f"paths.root_dir={tmp_path}", *overrides], config_name=config_name)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / config_name)
    return cfg


def run_module(
    module: str, *args: str, cwd: Path, timeout: int = 900, **env: str
) -> subprocess.CompletedProcess:
    """`python -m <module> ...` in a subprocess, as a user runs it; W&B off, and
    PETSEG_NUM_GPUS only when `env` sets it. `timeout` only guards against a hang: far above
    any run's duration on a loaded machine."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **env}
    if "PETSEG_NUM_GPUS" not in env:
        full_env.pop("PETSEG_NUM_GPUS", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_train(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m petseg.train ...` (sweeps and DDP start processes of their own)."""
    return run_module("petseg.train", *args, cwd=cwd, **env)


def sweep_jobs(root: Path) -> list[Path]:
    """A multirun's job folders under `root`/outputs/multirun, in job order."""
    return sorted((root / "outputs" / "multirun").glob("*/*/[0-9]*"), key=lambda p: int(p.name))


def quiet_trainer(root: str | Path | None, **options) -> L.Trainer:
    """A one-device CPU Trainer that writes nothing of its own: no logger, checkpoints, progress
    bar or model summary unless `options` turn them on."""
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(default_root_dir=root, **{**defaults, **options})


# One intra-op thread for tiny tensors (several times faster on a busy 2-core CPU), the count
# restored after so later tests run as configured: the bench's worker_threads does just that.
single_thread = worker_threads


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture
def cfg_factory(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose at test size: 64 px, batch 2, no workers, outputs and data under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        base = [
            f"paths.root_dir={tmp_path}",
            "data.image_size=64",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.pin_memory=false",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
        ]
        cfg = compose_config([*base, *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make


@pytest.fixture(scope="session")
def pets_mini() -> Path:
    """The real Oxford-IIIT Pet subset beside the project; tests using it skip when it is absent."""
    if not (PETS_MINI / "oxford-iiit-pet" / "images").is_dir():
        pytest.skip(f"real data subset not found at {PETS_MINI}")
    return PETS_MINI


@pytest.fixture
def tiny_pets(tmp_path: Path) -> Path:
    """A tiny dataset in the official layout (synthetic content): returns data.root."""
    from petseg.data.synthetic import ensure_synthetic

    root = tmp_path / "pets"
    ensure_synthetic(root, num_trainval=10, num_test=4, size=48, seed=1)
    return root
