"""`python -m petseg.train [overrides]`: compose the config, wire the objects, fit and test.

This is the only place objects are wired together for a run (the builders are petseg.build's).
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from petseg.build import (
    build,
    build_callbacks,
    build_loggers,
    build_module,
    build_trainer,
    to_floats,
)
from petseg.config import CONF_DIR, find_last_checkpoint, validate
from petseg.console import print_config, quiet_known_noise
from petseg.errors import ConfigError, one_line, print_user_error, user_error
from petseg.flops import mult_adds
from petseg.launch import setup_devices
from petseg.metrics import article_protocol
from petseg.run_status import (
    Interrupted,
    SigtermGuard,
    StatusFile,
    effective_status,
    read_status,
    remove_stale_temp_files,
)
from petseg.wandb_run import apply_wandb_env, finish_wandb, has_wandb, wandb_status_fields

log = logging.getLogger("petseg.train")


def model_stats(net: torch.nn.Module, image_size: int, in_channels: int = 3) -> dict[str, int]:
    """Parameters and mult-adds at the configured input size, printed and logged."""
    from torchinfo import summary

    stats = summary(
        net, input_size=(1, in_channels, image_size, image_size), depth=2, verbose=0, device="cpu"
    )
    log.info("Model summary at %dx%d:\n%s", image_size, image_size, stats)
    # torchinfo counts a transformer's Linear once per image, not per token: count per op instead.
    training = net.training
    per_op = mult_adds(net, torch.zeros(1, in_channels, image_size, image_size))
    net.train(training)
    log.info("Mult-adds per image (per-op count): %.3fG", per_op / 1e9)
    return {
        "model/params": int(stats.total_params),
        "model/trainable_params": int(stats.trainable_params),
        "model/mult_adds": int(per_op),
        "model/mult_adds_torchinfo": int(stats.total_mult_adds),
    }


def hydra_runtime() -> Any | None:
    """Hydra's runtime config inside `python -m petseg.train`, None when called as a function."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_choices() -> dict[str, Any]:
    """Hydra's group choices of this run (`model: vit_small`), {} outside a Hydra app."""
    hc = hydra_runtime()
    return {k: v for k, v in hc.runtime.choices.items() if v is not None} if hc else {}


def sweep_group(hc: Any) -> str:
    """A multirun's W&B group: its sweep folder's `<date>_<time>`, unique across days."""
    folder = Path(hc.sweep.dir)
    return f"{folder.parent.name}_{folder.name}"


def name_wandb_run(cfg: DictConfig) -> None:
    """W&B name `<model>-<loss>[-<job>]`, group = the sweep's date and time, job_type train or
    debug, tags: the top-level `tags`, model and loss (and `debug`). A debug run stays offline.

    Fills only what the user left empty, so `logger.wandb.name=...` still wins.
    """
    if not has_wandb(cfg):
        return
    hc = hydra_runtime()
    choices = hydra_choices()
    model = choices.get("model") or cfg.model._target_.rsplit(".", 1)[-1].lower()
    loss = choices.get("loss") or cfg.loss._target_.rsplit(".", 1)[-1].lower()
    multirun = hc is not None and str(hc.mode) == "RunMode.MULTIRUN"
    debug = bool(choices.get("debug"))
    wandb_cfg = cfg.logger.wandb
    with open_dict(cfg):
        if not wandb_cfg.get("name"):
            wandb_cfg.name = f"{model}-{loss}" + (f"-{hc.job.num}" if multirun else "")
        if not wandb_cfg.get("group") and multirun:
            wandb_cfg.group = sweep_group(hc)
        if not wandb_cfg.get("job_type"):
            wandb_cfg.job_type = "debug" if debug else "train"
        tags = {*(cfg.get("tags") or []), *(wandb_cfg.get("tags") or [])}
        tags |= {f"model:{model}", f"loss:{loss}", *(["debug"] if debug else [])}
        wandb_cfg.tags = sorted(tags)
        if debug:
            wandb_cfg.offline = True
            wandb_cfg.log_model = False
        if not wandb_cfg.get("id"):  # chosen here so status.json can hold it for a resume
            wandb_cfg.id = secrets.token_hex(4)


def run_hyperparams(cfg: DictConfig, stats: dict[str, int]) -> dict[str, Any]:
    """What every logger records of a run: the composed config at the top level, Hydra's
    choices and command-line overrides (`vit` vs `vit_small` share a `_target_`), the stats."""
    hc = hydra_runtime()
    overrides = list(hc.overrides.task) if hc else []
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    return {**config, "choices": hydra_choices(), "overrides": overrides, **stats}


def status_file(cfg: DictConfig) -> StatusFile | None:
    """The run folder's status.json writer; None off rank 0 (DDP's other ranks run this script
    too, with their own unused W&B ids) or without a run folder."""
    if rank_zero_only.rank != 0:
        return None
    try:
        folder = Path(cfg.paths.output_dir)
    except Exception:  # composed without Hydra and no output_dir
        return None
    previous = read_status(folder)
    if previous and effective_status(previous) == "running" and previous.get("pid") != os.getpid():
        raise ConfigError(
            f"{folder}: another run is still writing to this folder (pid {previous.get('pid')} "
            f"on {previous.get('host')}); wait for it or choose another hydra.run.dir"
        )
    remove_stale_temp_files(folder)
    return StatusFile(folder)


def resolve_auto_weights(cfg: DictConfig, datamodule: Any) -> None:
    """`loss.weight: auto` -> class weights from the training split's pixel frequencies.

    The list, not `auto`, goes into the checkpoint, so a reloaded model has the same loss.
    """
    if cfg.loss.get("weight") != "auto":
        return
    from petseg.losses import class_weights_from_counts

    counts = datamodule.class_pixel_counts()
    weights = class_weights_from_counts(counts, cfg.loss.get("weight_scheme", "inverse_sqrt"))
    log.info("Class pixel counts %s -> loss weights %s", counts.tolist(), weights.tolist())
    with open_dict(cfg):
        cfg.loss.weight = [round(float(w), 6) for w in weights]
        cfg.loss.pop("weight_scheme", None)


def resolve_resume(cfg: DictConfig) -> None:
    """`ckpt_path=last` -> the newest epoch-end last.ckpt; a resumed run keeps its W&B run id.

    The run that wrote the checkpoint must have ended; temp files it left when killed are removed.
    """
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return
    path = find_last_checkpoint(cfg.paths.log_dir) if ckpt == "last" else Path(ckpt)
    folder = path.parent.parent
    status = read_status(folder)
    if effective_status(status) == "running":
        raise ConfigError(
            f"ckpt_path={ckpt}: the run in {folder} is still running (pid {status.get('pid')} on "
            f"{status.get('host')}); stop it first, or resume from a copy of {path.name}"
        )
    remove_stale_temp_files(folder)
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
        if status.get("wandb_id") and has_wandb(cfg):
            cfg.logger.wandb.id = status["wandb_id"]
    log.info("Resuming from %s (W&B run %s)", path, status.get("wandb_id") or "new")


def replay_csv_history(ckpt_path: Path, loggers: list[Any]) -> None:
    """Copy the resumed run's CSV rows from before the checkpoint into this run's metrics.csv.

    The resumed run writes to a new folder; with the old rows up to the checkpoint's step (and not
    the ones after it, from an epoch cut short), its metrics.csv is the whole history once.
    """
    from lightning.pytorch.loggers import CSVLogger

    old = ckpt_path.parent.parent / "csv" / "metrics.csv"
    csv_loggers = [lg for lg in loggers if isinstance(lg, CSVLogger)]
    if not old.is_file() or not csv_loggers:
        return
    step = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)["global_step"]
    with old.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) < step]
    for row in rows:
        values: dict[str, float] = {
            k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"
        }
        if "epoch" in values:
            values["epoch"] = int(values["epoch"])
        for logger in csv_loggers:
            logger.log_metrics(values, step=int(row["step"]))
    log.info("Resumed history: %d rows before step %d from %s", len(rows), step, old)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one run; returns the final metrics, e.g. `val/miou` for a sweeper.

    status.json, the exception raised and W&B's exit code record how the run ended: completed,
    failed, or interrupted (Interrupted, for SIGINT/SIGTERM: no test runs after it).
    """
    status = None
    quiet_known_noise()
    try:
        with SigtermGuard() as guard:
            status = status_file(cfg)
            if status is not None:
                status.write("running")
                status.beat()
            setup_devices(cfg)  # a sweep job's GPU, before CUDA starts; DDP launch checks
            validate(cfg)  # before any data loads
            resolve_resume(cfg)
            if cfg.get("seed") is not None:
                L.seed_everything(cfg.seed, workers=True)
            apply_wandb_env(cfg)
            name_wandb_run(cfg)
            if status is not None:
                status.write("running", **wandb_status_fields(cfg))
                if cfg.get("print_config", True):
                    print_config(cfg, Path(cfg.paths.output_dir) / "config_tree.log")
            metrics = fit_and_test(cfg, guard)
    except BaseException as e:
        code, state, error = how_it_ended(e)
        finish_wandb(code)
        if status is not None:
            status.end(state, error=error, exit_code=code)
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C outside fit: the same end as inside
            raise Interrupted(signal.SIGINT) from None
        raise
    finish_wandb(0)
    if status is not None:
        status.end("completed", metrics=metrics, exit_code=0)
    return metrics


def how_it_ended(error: BaseException) -> tuple[int, str, str]:
    """(exit code, status, one-line error) for an exception that ended a run."""
    if isinstance(error, KeyboardInterrupt):
        error = Interrupted(signal.SIGINT)
    if isinstance(error, Interrupted):
        return error.code, "interrupted", error.name
    cause = user_error(error)
    return 1, "failed", one_line(cause) if cause is not None else repr(error)[:500]


def run_lightning(trainer: L.Trainer, fn: Any, **kwargs: Any) -> Any:
    """trainer.fit/test, with Lightning's SystemExit for SIGTERM or Ctrl-C raised as Interrupted
    (Lightning exits 0 on SIGTERM and 1 on Ctrl-C)."""
    try:
        return fn(**kwargs)
    except SystemExit as e:
        if isinstance(e, SIGTERMException):
            raise Interrupted(signal.SIGTERM) from None
        if trainer.interrupted:
            raise Interrupted(signal.SIGINT) from None
        raise


def fit_and_test(cfg: DictConfig, guard: SigtermGuard) -> dict[str, float]:
    """Wire data, module, loggers and Trainer; fit, then test the best checkpoint."""
    article = article_protocol(cfg)
    datamodule = build(cfg.data)
    datamodule.check_source()
    resolve_auto_weights(cfg, datamodule)
    module = build_module(cfg, article_protocol=article)
    stats = model_stats(module.net, cfg.data.image_size, cfg.model.get("in_channels", 3))

    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks=build_callbacks(cfg), logger=loggers)
    guard.trainer = trainer
    for logger in trainer.loggers:
        logger.log_hyperparams(run_hyperparams(cfg, stats))
    if cfg.get("ckpt_path"):
        replay_csv_history(Path(cfg.ckpt_path), trainer.loggers)
    run_lightning(
        trainer, trainer.fit, model=module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path")
    )
    metrics = to_floats(trainer.callback_metrics)  # val/miou_best: SegModule's, kept on resume
    best = trainer.checkpoint_callback
    if best is not None and best.best_model_path:
        score = float(best.best_model_score) if best.best_model_score is not None else None
        log.info("Best checkpoint: %s (val/miou %s)", best.best_model_path, score)
    if cfg.get("test"):
        ckpt = best.best_model_path if best is not None and best.best_model_path else None
        run_lightning(trainer, trainer.test, model=module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update(to_floats(trainer.callback_metrics))
    return {**metrics, **{k: float(v) for k, v in stats.items()}}


class JobFailed(RuntimeError):
    """A multirun job's user-fixable failure: Hydra records it and runs the other jobs."""


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Exit code 0 completed, 1 failed, 128 + signal for SIGINT (130) or SIGTERM (143)."""
    try:
        metrics = train(cfg)
    except Interrupted as stop:
        log.warning("Run interrupted by %s; resume with ckpt_path=last", stop.name)
        raise SystemExit(stop.code) from None
    except Exception as e:
        cause = user_error(e)
        if cause is None:  # a bug, not bad input: keep the traceback
            raise
        print_user_error(cause, log)
        hc = hydra_runtime()
        if hc is not None and str(hc.mode) == "RunMode.MULTIRUN":
            raise JobFailed(one_line(cause)) from None
        raise SystemExit(1) from None
    # A sweeper (e.g. Optuna) optimises the returned value.
    return metrics.get("val/miou_best", metrics.get("val/miou"))


if __name__ == "__main__":
    main()
