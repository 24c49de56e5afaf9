"""SegModule: one LightningModule for every architecture, loss, optimizer and schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassConfusionMatrix

from petseg.metrics import scores_from_confmat

Config = Mapping[str, Any]
STAGES = ("train", "val", "test")


def plain(cfg: Config | None) -> dict[str, Any] | None:
    """A resolved plain dict: what goes into the checkpoint, loadable without Hydra or the yaml."""
    if cfg is None or isinstance(cfg, dict):
        return cfg
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


class SegModule(L.LightningModule):
    """Wraps a network built from its `_target_` config; the configs are the hyperparameters.

    Saving configs rather than modules keeps checkpoints small and self-describing:
    `SegModule.load_from_checkpoint(path)` rebuilds network and loss with no Hydra run.
    """

    def __init__(
        self,
        net: Config,
        loss: Config,
        optimizer: Config,
        scheduler: Config | None = None,
        class_names: Sequence[str] = ("pet", "background", "border"),
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler = plain(net), plain(loss), plain(optimizer), plain(scheduler)
        class_names = list(class_names)
        self.save_hyperparameters(
            {
                "net": net,
                "loss": loss,
                "optimizer": optimizer,
                "scheduler": scheduler or None,
                "class_names": class_names,
                "ignore_index": ignore_index,
            }
        )
        self.net = instantiate(net)
        self.criterion = instantiate(loss)
        self.class_names = class_names
        # One dataset-level confusion matrix per stage; every score is derived from it.
        # (ModuleDict keys cannot be "train": it would shadow nn.Module.train.)
        self.confmats = torch.nn.ModuleDict(
            {
                f"{stage}_cm": MulticlassConfusionMatrix(
                    len(class_names), ignore_index=ignore_index, validate_args=False
                )
                for stage in STAGES
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self(image)  # (B, C, H, W)
        loss = self.criterion(logits, mask)
        # max(1).indices: same result as argmax(1), ~40x faster on CPU for (B, C, H, W).
        preds = logits.detach().max(1).indices  # (B, H, W)
        self.confmats[f"{stage}_cm"].update(preds, mask)
        batch_size = image.shape[0]
        if stage == "train":  # per step for the curve, and the epoch mean beside it
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=batch_size)
        else:
            self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def _log_scores(self, stage: str) -> None:
        confmat = self.confmats[f"{stage}_cm"]
        if not confmat.update_called:  # e.g. an epoch that ran no batch of this stage
            return
        scores = scores_from_confmat(confmat.compute(), self.class_names)
        miou = scores.pop("miou")
        self.log(f"{stage}/miou", miou, prog_bar=stage != "train")
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})
        confmat.reset()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).max(1).indices

    def on_train_epoch_end(self) -> None:
        self._log_scores("train")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
