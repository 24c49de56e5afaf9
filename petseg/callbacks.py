"""Lightning callbacks of petseg's own: small, one job each."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from petseg.errors import NonFiniteLossError


class SaveOnInterrupt(L.Callback):
    """On a crash, Ctrl-C or SIGTERM mid-epoch, save `<dirpath>/<filename>.ckpt` to resume from.

    Not on a non-finite loss: those weights may already be NaN, and `last.ckpt` (the end of the
    previous epoch) is the good one to go back to.
    """

    def __init__(self, dirpath: str | Path, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, NonFiniteLossError):
            return
        trainer.save_checkpoint(self.path)
