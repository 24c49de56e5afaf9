"""SegModule: one LightningModule for every architecture, loss, optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from petseg.confusion import report_confusion
from petseg.errors import ConfigError, NonFiniteLossError
from petseg.losses import soft_iou
from petseg.metrics import (
    SOFT_IOU_SMOOTH,
    argmax_classes,
    article_batch_figures,
    scores_from_confmat,
)
from petseg.optim import configure_optimizers

Config = Mapping[str, Any]
STAGES = ("train", "val", "test")
# The checkpoint entry that holds the best val/miou so far and its epoch (SegModule.best_val_*).
BEST_KEY = "petseg_val_miou_best"


def plain(cfg: Config | None) -> dict[str, Any] | None:
    """A resolved plain dict: what goes into the checkpoint, loadable without Hydra or the yaml."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return None if cfg is None else dict(cfg)


def strip_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without torch.compile's `_orig_mod.`, e.g. from `module.net = torch.compile(net)`."""
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


class SegModule(L.LightningModule):
    """Wraps a network built from its `_target_` config; the configs are the hyperparameters, so
    `SegModule.load_from_checkpoint(path)` rebuilds network and loss with no Hydra run.

    Per stage (`train/`, `val/`, `test/`), over the split: loss, the confusion-matrix scores,
    `soft_iou` (mean over images), with `article_protocol` the article's figures (train's scores
    but the loss: every `train_metrics_every_n_steps`-th batch), and `val/miou_best` with its
    epoch. `channels_last`, `compile` and `train_metrics_every_n_steps` are `perf.*` switches.
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
        net, loss, class_names = plain(net), plain(loss), list(class_names)
        hparams = {"net": net, "loss": loss, "optimizer": plain(optimizer)}
        hparams |= {"scheduler": plain(scheduler) or None, "class_names": class_names}
        hparams |= {"ignore_index": ignore_index, "article_protocol": article_protocol}
        # loggers get the whole composed config from petseg.train, once
        self.save_hyperparameters(hparams, logger=False)
        self.net = instantiate(net)
        self.criterion = instantiate(loss)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)  # 4-D weights; the rest unchanged
        self.compile_backend = "inductor" if compile is True else (compile or None)
        self.compiled = False
        self.train_metrics_every_n_steps = train_metrics_every_n_steps  # checked in petseg.config
        self.class_names, self.ignore_index = class_names, ignore_index
        # The first global step with a non-finite train loss (-1: none), on the loss's device.
        self.first_nonfinite: torch.Tensor | None = None
        # The best val/miou of the fit so far and its epoch (None: none yet); in checkpoints.
        self.best_val_miou: float | None = None
        self.best_val_epoch: int | None = None
        # One confusion matrix per stage, every score derived from it ("train" cannot be a
        # ModuleDict key: it would shadow nn.Module.train). validate_args=False: the checks run
        # torch.unique over every pixel, a GPU sync per batch.
        n = len(class_names)
        cm = {"ignore_index": ignore_index, "validate_args": False}
        self.confmats = torch.nn.ModuleDict(
            {f"{stage}_cm": MulticlassConfusionMatrix(n, **cm) for stage in STAGES}
        )
        self.article_protocol = article_protocol
        if article_protocol:
            if "background" not in class_names:
                raise ConfigError(
                    f"metrics.article_protocol=true scores non-background pixels, but class_names "
                    f"{class_names} has no 'background'; name the background class 'background'"
                )
            self.background_index = class_names.index("background")
            iou = {
                "average": "micro",
                "ignore_index": self.background_index,
                "validate_args": False,
            }
            self.article_ious = torch.nn.ModuleDict(
                {f"{stage}_iou": MulticlassJaccardIndex(n, **iou) for stage in STAGES}
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_model(self) -> None:
        """Compile the network once, in place (no `_orig_mod.` keys), when a trainer first runs."""
        if self.compile_backend and not self.compiled:
            self.net.compile(backend=self.compile_backend)
            self.compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = {"value": self.best_val_miou, "epoch": self.best_val_epoch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also load checkpoints saved from a `torch.compile`d network (`_orig_mod.` keys)."""
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = strip_compile_prefix(checkpoint["state_dict"])
        best = checkpoint.get(BEST_KEY) or {}  # older checkpoints have none
        self.best_val_miou, self.best_val_epoch = best.get("value"), best.get("epoch")

    def _step(self, batch: dict[str, torch.Tensor], stage: str, metrics: bool = True) -> Any:
        image, mask = batch["image"], batch["mask"]
        logits = self(image)  # (B, C, H, W)
        loss = self.criterion(logits, mask)
        size = image.shape[0]
        if stage == "train":  # the step's loss for the curve, and the epoch's mean
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=size)
        else:
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size)
        if metrics:
            self._update_metrics(stage, logits.detach(), mask)
        return loss

    def _update_metrics(self, stage: str, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """One batch into the stage's confusion matrix, soft IoU and article figures."""
        preds = argmax_classes(logits)
        self.confmats[f"{stage}_cm"].update(preds, mask)
        # the batch's mean over images; weighted by the batch size, the split's mean over images
        soft = soft_iou(
            logits.float(),
            mask,
            smooth=SOFT_IOU_SMOOTH,
            ignore_index=self.ignore_index,
            average="image",
        )
        on = {"on_step": False, "on_epoch": True}
        self.log(f"{stage}/soft_iou", soft, batch_size=mask.shape[0], **on)
        if not self.article_protocol:
            return
        # Ignored pixels count as background, which the article's scores skip.
        target = mask.masked_fill(mask == self.ignore_index, self.background_index)
        self.article_ious[f"{stage}_iou"].update(preds, target)
        if stage != "train":  # its figures are means of per-batch values: each batch weighs 1
            num_classes = len(self.class_names)
            figures = article_batch_figures(preds, target, soft, num_classes, self.background_index)
            for name, value in figures.items():
                self.log(f"{stage}/{name}", value, batch_size=1, **on)

    def _log_scores(self, stage: str) -> None:
        confmat = self.confmats[f"{stage}_cm"]
        if not confmat.update_called:  # e.g. an epoch that ran no batch of this stage
            return
        cm = confmat.compute()
        confmat.reset()
        scores = scores_from_confmat(cm, self.class_names)
        if self.article_protocol:
            scores["article_iou"] = self.article_ious[f"{stage}_iou"].compute()
            self.article_ious[f"{stage}_iou"].reset()
        miou = scores.pop("miou")
        self.log(f"{stage}/miou", miou, prog_bar=stage != "train")
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})
        if stage == "val":
            self._log_best(float(miou))
        if stage != "train":
            report_confusion(
                self.trainer, cm, self.class_names, f"{stage}_epoch{self.current_epoch:03d}"
            )

    def _log_best(self, miou: float) -> None:
        """val/miou_best and its epoch, in a fit (not its sanity check); a NaN mIoU is no best."""
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return
        if not math.isnan(miou) and (self.best_val_miou is None or miou > self.best_val_miou):
            self.best_val_miou, self.best_val_epoch = miou, self.current_epoch
        if self.best_val_miou is not None:
            self.log("val/miou_best", self.best_val_miou)
            self.log("val/miou_best_epoch", float(self.best_val_epoch))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        metrics = batch_idx % self.train_metrics_every_n_steps == 0
        loss = self._step(batch, "train", metrics=metrics)
        self._check_finite(loss, batch_idx)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a NaN/inf loss, naming the first step that had one.

        The first bad step is kept on the loss's device; on a GPU it is read (a sync) only on
        logging steps and the epoch's last batch (before its checkpoint), on a CPU every step.
        """
        first = self.first_nonfinite
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        # a Python int, not a tensor: copying one to the GPU would sync on every step
        self.first_nonfinite = torch.where(bad & (first < 0), self.global_step, first)
        if loss.device.type != "cpu":
            trainer, every = self.trainer, self.trainer.log_every_n_steps
            logging_step = every > 0 and (trainer.global_step + 1) % every == 0
            last = batch_idx + 1 >= trainer.num_training_batches
            if not (logging_step or last or trainer.fast_dev_run):
                return
        if (bad_step := int(self.first_nonfinite)) >= 0:
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
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> Any:
        # Lightning moved the module to its device before this call (fused Adam needs it)
        return configure_optimizers(
            self.hparams.optimizer, self.hparams.scheduler, self.parameters()
        )
