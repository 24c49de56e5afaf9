"""Where a job runs: one GPU per sweep job on a local GPU pool, and what DDP can launch where.

`hydra/launcher=gpu_pool` (joblib) runs `n_jobs` sweep jobs at once in worker processes. A job
narrows CUDA_VISIBLE_DEVICES to one GPU before anything in it initialises CUDA (`train(cfg)` calls
`setup_devices` first thing). The GPU comes from the job number, round robin; a lock file per slot
keeps two live workers off one GPU, and a worker keeps its GPU for every later job it runs, since
CUDA reads CUDA_VISIBLE_DEVICES once per process.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig

from petseg.errors import ConfigError

log = logging.getLogger(__name__)

POOL_LAUNCHER = "gpu_pool"  # the hydra/launcher choice whose jobs take a GPU each
# Strategies whose launcher starts the other ranks by re-running the command line.
RERUN_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")

# This process's pool slot: (GPU id, the open lock file that holds the slot until the process ends).
_claimed: tuple[str, IO[str]] | None = None


def gpu_for_job(job_num: int, gpus: Sequence[str]) -> str | None:
    """The GPU for sweep job `job_num`: round robin over `gpus` (CUDA_VISIBLE_DEVICES ids).

    None when there are no GPUs: the job runs wherever the trainer config says (the CPU).
    """
    if not gpus:
        return None
    return gpus[job_num % len(gpus)]


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPU ids this process may hand out, read without initialising CUDA."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        # NVML count: no CUDA context, so CUDA_VISIBLE_DEVICES can still be set after it.
        return [str(i) for i in range(torch.cuda.device_count())]
    gpus = []
    for gpu in (g.strip() for g in listed.split(",")):
        if not gpu or gpu.startswith("-"):  # CUDA stops at the first invalid id ("-1": none)
            break
        gpus.append(gpu)
    return gpus


def claim_slot(preferred: int, slots: int, lock_dir: Path) -> tuple[int, IO[str]] | None:
    """Lock the first free slot from `preferred` on; None when every slot is held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in ((preferred + i) % slots for i in range(slots)):
        handle = open(lock_dir / f"slot{slot}.lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    return None


def take_pool_gpu(
    job_num: int, n_jobs: int, lock_dir: Path, environ: MutableMapping[str, str]
) -> str | None:
    """Set CUDA_VISIBLE_DEVICES to sweep job `job_num`'s GPU; return it (None: no GPU, unset).

    `n_jobs` slots (all visible GPUs when n_jobs <= 0) share the GPUs round robin: n_jobs=2 on four
    GPUs uses two of them, n_jobs=8 puts two jobs on each. Job k wants slot k mod n_jobs and takes
    the next free one if a live worker holds that; a worker that ran a job keeps its slot.
    """
    global _claimed
    if _claimed is not None:  # CUDA may already run on it in this process
        gpu = _claimed[0]
    else:
        visible = visible_gpus(environ)
        if not visible:
            return None
        slots = n_jobs if n_jobs > 0 else len(visible)
        claimed = claim_slot(job_num % slots, slots, lock_dir)
        if claimed is None:  # more live workers than slots: share the wanted one
            log.warning("Sweep job %d: every GPU slot is held; sharing one", job_num)
            slot = job_num % slots
        else:
            slot = claimed[0]
        gpu = gpu_for_job(slot, visible)
        assert gpu is not None  # visible is not empty
        if claimed is not None:
            _claimed = (gpu, claimed[1])
    environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("Sweep job %d on GPU %s", job_num, gpu)
    return gpu


def local_processes(trainer: Mapping[str, Any]) -> int:
    """How many processes the trainer config runs on this node (devices), read without CUDA."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if str(devices).lstrip("-").isdigit() and int(devices) > 0:
        return int(devices)
    # auto / -1: every GPU for a GPU accelerator, one process on the CPU.
    accelerator = str(trainer.get("accelerator", "auto"))
    return max(1, torch.cuda.device_count()) if accelerator in ("auto", "gpu", "cuda") else 1


def launched_externally() -> bool:
    """True when the ranks are started by SLURM, torchrun or a parent Lightning process."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    detected = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    return detected or "LOCAL_RANK" in os.environ


def check_ddp(trainer: Mapping[str, Any], multirun: bool) -> None:
    """Refuse DDP settings that would fail after the processes start, naming the fix."""
    strategy = trainer.get("strategy")
    if strategy not in RERUN_STRATEGIES or local_processes(trainer) < 2:
        return
    if trainer.get("sync_batchnorm") and trainer.get("accelerator") == "cpu":
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU path): "
            "add trainer.sync_batchnorm=false with trainer.accelerator=cpu"
        )
    if multirun and not launched_externally():
        raise ConfigError(
            f"trainer.strategy={strategy} with {local_processes(trainer)} devices in a multirun: "
            "Lightning starts the other ranks by re-running the command, which would restart "
            "the sweep. Use trainer.devices=1 (hydra/launcher=gpu_pool gives each job a GPU), "
            "hydra/launcher=slurm with hydra.launcher.tasks_per_node=<devices>, or single runs"
        )


def setup_devices(cfg: DictConfig) -> None:
    """First thing in a run: on the gpu_pool launcher take a GPU, then check the DDP settings."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hc is not None and str(hc.mode) == "RunMode.MULTIRUN"
    if multirun and hc.runtime.choices.get("hydra/launcher") == POOL_LAUNCHER:
        lock_dir = Path(hc.sweep.dir) / ".gpu_pool"
        take_pool_gpu(hc.job.num, int(hc.launcher.get("n_jobs", 0)), lock_dir, os.environ)
    check_ddp(cfg.trainer, multirun)  # after: `devices: auto` now counts this job's GPU only
