"""A fixed network whose logits are known from the pixels, and its checkpoint, so
predict's and evaluate's outputs can be computed by hand."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from petseg.module import SegModule

# `_target_`s resolve through this module: tests/ is on sys.path (pytest's rootdir conftest).
STUB_NET = {"_target_": "stub_nets.BrightIsPet", "in_channels": 3, "num_classes": 3}


class BrightIsPet(nn.Module):
    """Pet where the pixel is bright, background where dark, never border.

    logits (pet, background, border) = (8 (m - 0.5), -8 (m - 0.5), -10), m the channel mean.
    """

    stride = 1

    def __init__(self, in_channels: int = 3, num_classes: int = 3) -> None:
        super().__init__()
        assert (in_channels, num_classes) == (3, 3)
        # Fixed, not learned; a parameter so the checkpoint's state dict is not empty.
        self.scale = nn.Parameter(torch.tensor(8.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pet = self.scale * (x.mean(1, keepdim=True) - 0.5)  # (B, 1, H, W)
        return torch.cat([pet, -pet, torch.full_like(pet, -10.0)], 1)  # (B, 3, H, W)


def stub_checkpoint(path: Path) -> Path:
    """A SegModule checkpoint of BrightIsPet (cross entropy), as load_from_checkpoint reads it."""
    module = SegModule(
        net=STUB_NET,
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return path
