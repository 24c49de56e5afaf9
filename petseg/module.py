"""SegModule: one LightningModule for every architecture, loss, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from petseg.errors import ConfigError, NonFiniteLossError
from petseg.metrics import (
    ARTICLE_FIGURES,
    SOFT_IOU_SMOOTH,
    argmax_classes,
    article_batch_figures,
    confusion_table,
    metric_inputs,
    save_confusion,
    scores_from_confmat,
)

Config = Mapping[str, Any]
STAGES = ("train", "val", "test")
# Optimizers with a fused CUDA kernel (one launch for every parameter), used when on CUDA.
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)
# The checkpoint entry that holds the best val/miou so far and its epoch (SegModule.best_val_*).
BEST_KEY = "petseg_val_miou_best"


def plain(cfg: Config | None) -> dict[str, Any] | None:
    """A resolved plain dict: what goes into the checkpoint, loadable without Hydra or the yaml."""
    if cfg is None or isinstance(cfg, dict):
        return cfg
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def use_fused(
    optimizer: Callable[..., torch.optim.Optimizer], device_types: Collection[str]
) -> bool:
    """Whether to pass `fused=True`: Adam/AdamW, every parameter on CUDA, fused/foreach not set.

    `optimizer` is the partial from the optimizer config; an explicit `fused` (also false) or
    `foreach: true` in it is the user's choice and wins.
    """
    cls = getattr(optimizer, "func", optimizer)
    keywords = getattr(optimizer, "keywords", {})
    return (
        isinstance(cls, type)
        and issubclass(cls, FUSABLE_OPTIMIZERS)
        and set(device_types) == {"cuda"}
        and keywords.get("fused") is None
        and not keywords.get("foreach")
    )


def scores_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the loggers for this stage's epoch-end scores (`self.log`), so
    pictures and tables logged by hand sit at the same step as the scores they belong to.

    Lightning logs them at its count of batches that stepped; a validation inside fit runs after
    its batch's optimizer step but before that count goes up: one below trainer.global_step (one
    optimizer, as here). Test, predict and a lone validate: trainer.global_step.
    """
    if trainer.state.fn == TrainerFn.FITTING:
        return max(0, trainer.global_step - 1)
    return trainer.global_step


def strip_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without torch.compile's `_orig_mod.`, e.g. from `module.net = torch.compile(net)`."""
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


class SegModule(L.LightningModule):
    """Wraps a network built from its `_target_` config; the configs are the hyperparameters.

    Saving configs rather than modules keeps checkpoints small and self-describing:
    `SegModule.load_from_checkpoint(path)` rebuilds network and loss with no Hydra run.

    Metrics per stage (`train/`, `val/`, `test/`), each accumulated over the whole split: the
    confusion-matrix scores (pixel_acc, miou, mdice, iou_<class>, dice_<class>), `soft_iou` (the
    article's soft IoU, mean over images) and, with `article_protocol=True`, `article_iou` (the
    article's micro IoU over non-background-target pixels, over the split) and, for val and test,
    the article's own figures as it computed them, means of per-batch values: `article_pixel_acc`
    (what its 88.28% / 86.96% / 85.89% are), `article_iou_acc`, `article_custom_iou` (see
    `petseg.metrics.article_protocol`).
    At the end of validation and test the confusion matrix goes to
    `<default_root_dir>/confusion/<stage>_epoch<NNN>.png|.csv`, and to W&B when it is a logger
    (at the step of that epoch's scores). Each validation of a fit also logs `val/miou_best` and
    `val/miou_best_epoch` (the best so far, this epoch included; kept in checkpoints, so a resumed
    run goes on from it): every logger's last value, e.g. the W&B summary, then holds the best
    beside the last `val/miou`.

    Speed switches (`perf.*` in the config), not
    hyperparameters: a checkpoint loads with or without them. `channels_last`: network weights
    and inputs in NHWC (faster convs under autocast on recent GPUs and CPUs). `compile`:
    `torch.compile` the network when the trainer first runs (true: inductor; a string: that
    backend, e.g. `eager` to check graph capture alone); it compiles `self.net` in place, so
    checkpoint keys stay `net.*`.
    `train_metrics_every_n_steps`: N > 1 updates the train metrics (not the loss) on every N-th
    batch only, so `train/miou` etc. estimate the epoch from 1/N of its batches (val and test
    always use every batch); 1, the default, is exact.
    """

    def __init__(
        self,
        net: Config,
        loss: Config,
        optimizer: Config,
        scheduler: Config | None = None,
        class_names: Sequence[str] = ("pet", "background", "border"),
        ignore_index: int = -100,
        article_protocol: bool = False,
        channels_last: bool = False,
        compile: bool | str = False,
        train_metrics_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        net, loss = plain(net), plain(loss)
        optimizer, scheduler = plain(optimizer), plain(scheduler)
        class_names = list(class_names)
        self.save_hyperparameters(
            {
                "net": net,
                "loss": loss,
                "optimizer": optimizer,
                "scheduler": scheduler or None,
                "class_names": class_names,
                "ignore_index": ignore_index,
                "article_protocol": article_protocol,
            }
        )
        self.net = instantiate(net)
        self.criterion = instantiate(loss)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # 4-D weights; the rest unchanged
        self.compile_backend = "inductor" if compile is True else (compile or None)
        self._compiled = False
        every = train_metrics_every_n_steps
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(
                f"perf.train_metrics_every_n_steps={every} must be an integer >= 1 "
                "(1: every training batch, exact)"
            )
        self.train_metrics_every_n_steps = every
        # The first global step with a non-finite train loss (-1: none), kept on the loss's device;
        # check_loss_every_step None: every step on CPU, deferred on accelerators (_check_finite).
        self._first_nonfinite: torch.Tensor | None = None
        self.check_loss_every_step: bool | None = None
        self.class_names = class_names
        # The best val/miou of the fit so far and its epoch (None: none yet); in checkpoints.
        self.best_val_miou: float | None = None
        self.best_val_epoch: int | None = None
        # One dataset-level confusion matrix per stage; every score is derived from it.
        # (ModuleDict keys cannot be "train": it would shadow nn.Module.train.)
        # One extra row/column holds ignored pixels (`metric_inputs` labels them so,
        # `_log_scores` drops it): torchmetrics' own ignore_index selects pixels by boolean
        # indexing, 1-3 ms per 8x128x128 batch on CPU and a GPU sync on every step.
        self.confmats = torch.nn.ModuleDict(
            {
                f"{stage}_cm": MulticlassConfusionMatrix(
                    len(class_names) + 1, ignore_index=None, validate_args=False
                )
                for stage in STAGES
            }
        )
        # The article's soft IoU: a per-image value, so the split mean weighs batches by size.
        # "disable": no NaN check, which would sync with the GPU on every step.
        self.soft_ious = torch.nn.ModuleDict(
            {f"{stage}_soft_iou": MeanMetric(nan_strategy="disable") for stage in STAGES}
        )
        # train/loss_epoch, weighted by batch size (one value per image: with nan_strategy=
        # "disable", torchmetrics <= 1.9 ignores `weight`, Lightning-AI/torchmetrics#3434). A
        # metric, not a second self.log per step: log() costs ~0.4 ms per call on CPU.
        self.epoch_loss = MeanMetric(nan_strategy="disable")
        self.article_protocol = article_protocol
        if article_protocol:
            if "background" not in class_names:
                raise ConfigError(
                    f"metrics.article_protocol=true scores non-background pixels, but class_names "
                    f"{class_names} has no 'background'; name the background class 'background'"
                )
            self.background_index = class_names.index("background")
            self.article_ious = torch.nn.ModuleDict(
                {
                    f"{stage}_article_iou": MulticlassJaccardIndex(
                        len(class_names),
                        average="micro",
                        ignore_index=self.background_index,
                        validate_args=False,
                    )
                    for stage in STAGES
                }
            )
            # The article's figures: one value per batch, each batch weighing the same.
            self.article_figures = torch.nn.ModuleDict(
                {
                    f"{stage}_{name}": MeanMetric(nan_strategy="disable")
                    for stage in ("val", "test")
                    for name in ARTICLE_FIGURES
                }
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_model(self) -> None:
        """Compile the network once, when a trainer first runs this module (`compile`)."""
        if self.compile_backend and not self._compiled:
            # In place (nn.Module.compile): same module and parameters, no `_orig_mod.` keys.
            self.net.compile(backend=self.compile_backend)
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = {"value": self.best_val_miou, "epoch": self.best_val_epoch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also load checkpoints saved from a `torch.compile`d network (`_orig_mod.` keys)."""
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = strip_compile_prefix(checkpoint["state_dict"])
        best = checkpoint.get(BEST_KEY) or {}  # older checkpoints have none
        self.best_val_miou, self.best_val_epoch = best.get("value"), best.get("epoch")

    def _step(
        self, batch: dict[str, torch.Tensor], stage: str, metrics: bool = True, log: bool = True
    ) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self(image)  # (B, C, H, W)
        loss = self.criterion(logits, mask)
        batch_size = image.shape[0]
        if metrics:
            self._update_metrics(stage, logits.detach(), mask)
        if stage == "train":  # the step's loss for the curve; the epoch mean at epoch end
            if log:
                self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.epoch_loss.update(loss.detach().float().expand(batch_size))
        else:
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def _reads_loss(self, batch_idx: int) -> bool:
        """Whether this training batch's loss is read: on the steps Lightning writes step metrics
        (trainer.log_every_n_steps) and on the epoch's last batch.

        self.log() costs ~0.4 ms per call on CPU, a fraction of a percent of a small model's step,
        for a value no logger writes (the progress bar shows the last one logged), and reading a
        GPU value syncs. Lightning's test is a private attribute: if it moves, every step reads.
        """
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if trainer is None or not hasattr(connector, "should_update_logs"):
            return True
        last = batch_idx + 1 >= trainer.num_training_batches
        return bool(connector.should_update_logs or trainer.fast_dev_run or last)

    def _update_metrics(self, stage: str, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """One batch into the stage's confusion matrix, soft IoU (and article IoU)."""
        ignore_index = self.hparams.ignore_index
        preds, labels, soft = metric_inputs(logits, mask, ignore_index, SOFT_IOU_SMOOTH)
        self.confmats[f"{stage}_cm"].update(preds, labels)  # ignored pixels: the extra class
        self.soft_ious[f"{stage}_soft_iou"].update(soft)  # one value per image
        if self.article_protocol:
            # Ignored pixels count as background: the Jaccard below skips both.
            target = mask.masked_fill(mask == ignore_index, self.background_index)
            self.article_ious[f"{stage}_article_iou"].update(preds, target)
            if stage != "train":
                figures = article_batch_figures(
                    preds, target, soft, len(self.class_names), self.background_index
                )
                for name, value in figures.items():
                    self.article_figures[f"{stage}_{name}"].update(value)

    def _log_scores(self, stage: str) -> None:
        confmat = self.confmats[f"{stage}_cm"]
        if not confmat.update_called:  # e.g. an epoch that ran no batch of this stage
            return
        num_classes = len(self.class_names)
        cm = confmat.compute()[:num_classes, :num_classes]  # without the ignored pixels' class
        scores = scores_from_confmat(cm, self.class_names)
        soft = self.soft_ious[f"{stage}_soft_iou"]
        scores["soft_iou"] = soft.compute()
        accumulated = [confmat, soft]
        if self.article_protocol:
            article = self.article_ious[f"{stage}_article_iou"]
            scores["article_iou"] = article.compute()
            accumulated.append(article)
            if stage != "train":
                for name in ARTICLE_FIGURES:
                    figure = self.article_figures[f"{stage}_{name}"]
                    scores[name] = figure.compute()
                    accumulated.append(figure)
        miou = scores.pop("miou")
        self.log(f"{stage}/miou", miou, prog_bar=stage != "train")
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})
        if stage == "val":
            self._log_best(float(miou))  # one read of the device per validation
        if stage != "train":
            self._report_confusion(stage, cm)
        for metric in accumulated:
            metric.reset()

    def _log_best(self, miou: float) -> None:
        """val/miou_best and its epoch, in a fit (not its sanity check); a NaN mIoU is no best."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not math.isnan(miou) and (self.best_val_miou is None or miou > self.best_val_miou):
            self.best_val_miou, self.best_val_epoch = miou, self.current_epoch
        if self.best_val_miou is not None:
            self.log("val/miou_best", self.best_val_miou)
            self.log("val/miou_best_epoch", float(self.best_val_epoch))

    def _report_confusion(self, stage: str, cm: torch.Tensor) -> None:
        """The split's confusion matrix as PNG + CSV in the run folder, and to W&B if it logs."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        name = f"{stage}_epoch{self.current_epoch:03d}"
        folder = Path(trainer.default_root_dir) / "confusion"
        png, _ = save_confusion(cm, self.class_names, folder, name)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns, rows = confusion_table(cm, self.class_names)
                confusion = {
                    f"{stage}/confusion_table": wandb.Table(columns=columns, data=rows),
                    f"{stage}/confusion": wandb.Image(str(png), caption=name),
                }
                logger.log_metrics(confusion, step=scores_step(trainer))  # type: ignore[arg-type]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        read = self._reads_loss(batch_idx)
        metrics = batch_idx % self.train_metrics_every_n_steps == 0
        loss = self._step(batch, "train", metrics=metrics, log=read)
        self._check_finite(loss, read)
        return loss

    def _check_finite(self, loss: torch.Tensor, read: bool) -> None:
        """Stop on a NaN/inf loss, naming the first step that had one.

        On CPU every step is checked. On a GPU reading the loss is a sync that stops the CPU
        queueing work ahead, so the first bad step is recorded on the device and read when the
        loss is read anyway (`_reads_loss`: logging steps and each epoch's last batch, before any
        epoch-end checkpoint): the run stops within trainer.log_every_n_steps steps and never
        saves NaN weights.
        """
        first = self._first_nonfinite
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        # A Python int, not a tensor: copying one to the GPU would sync on every step.
        self._first_nonfinite = torch.where(bad & (first < 0), self.global_step, first)
        check_now = self.check_loss_every_step
        if check_now is None:
            check_now = loss.device.type == "cpu"
        if not (check_now or read):
            return
        bad_step = int(self._first_nonfinite)
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"train/loss is not finite (nan or inf) at global step {bad_step} "
                f"(epoch {self.current_epoch}); resume from "
                "checkpoints/last.ckpt with a lower optimizer.lr, trainer.gradient_clip_val=1.0 "
                "or trainer.precision=32 (trainer.detect_anomaly=true finds the op)"
            )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return argmax_classes(self(batch["image"]))

    def on_train_epoch_end(self) -> None:
        if self.epoch_loss.update_called:
            self.log("train/loss_epoch", self.epoch_loss.compute())
            self.epoch_loss.reset()
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> Any:
        factory = instantiate(self.hparams.optimizer)
        params = list(self.parameters())
        # Lightning moved the module to its device before this call.
        fused = use_fused(factory, {p.device.type for p in params})
        optimizer = factory(params=params, **({"fused": True} if fused else {}))
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
