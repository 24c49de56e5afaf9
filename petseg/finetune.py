"""Fine-tuning a pretrained encoder: keep it frozen for the first epochs, then train it all.

A frozen encoder lets the randomly initialised decoder settle before its gradients reach (and
disturb) pretrained features, the usual first step of transfer learning (e.g. Howard & Ruder
2018, gradual unfreezing).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

from petseg.errors import ConfigError


class FreezeEncoder(BaseFinetuning):
    """Freeze `module.net`'s encoder (weights and norm statistics) for the first `epochs` epochs.

    The network provides `freeze_encoder()` / `unfreeze_encoder()` (SMPModel does, through smp's
    own switches, which also keep frozen BatchNorm layers in eval mode across `.train()`). The
    optimizer holds every parameter from the start: a frozen one gets no gradient and so no
    update (nor Adam state, nor weight decay), and trains from epoch `epochs` on, also after a
    resume past that epoch.
    """

    def __init__(self, epochs: int = 1) -> None:
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(
                f"callbacks.freeze_encoder.epochs={epochs} must be a whole number >= 0 "
                "(the epochs the encoder stays frozen)"
            )
        self.epochs = epochs
        self.frozen = False

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        if not (hasattr(net, "freeze_encoder") and hasattr(net, "unfreeze_encoder")):
            raise ConfigError(
                f"callbacks.freeze_encoder: {type(net).__name__} has no encoder to freeze; "
                "use a pretrained-encoder model (model=smp or an smp_* preset) or drop the callback"
            )
        if self.epochs > 0:
            net.freeze_encoder()
            self.frozen = True

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if self.frozen and epoch >= self.epochs:
            pl_module.net.unfreeze_encoder()
            self.frozen = False
