"""Test-time augmentation for evaluate and predict: softmax probabilities averaged over flips and
scales of the input, returned as log-probabilities so argmax, metrics and losses work unchanged.

Options: `tta:` in conf/evaluate.yaml and conf/predict.yaml. Each scaled side is rounded to the
nearest multiple of the network's stride (at least one stride; petseg.config.model_stride reads it
from the checkpoint's network config), so every pass meets the network's input constraint. Off
(`hflip: false`, `scales: [1.0]`) the network is not wrapped: scores are exactly those without TTA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from petseg.config import model_stride
from petseg.errors import ConfigError

KEYS = ("hflip", "scales")
USAGE = "use tta=none, tta=hflip, or e.g. tta.hflip=true tta.scales=[0.75,1,1.25]"


@dataclass(frozen=True)
class TTAOptions:
    """What TTA averages over: the mirrored image too (hflip) and each input scale."""

    hflip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def active(self) -> bool:
        """More than the one plain pass."""
        return self.hflip or self.scales != (1.0,)

    @property
    def passes(self) -> int:
        return len(self.scales) * (2 if self.hflip else 1)

    def describe(self) -> str:
        """One line for logs and metrics.json."""
        if not self.active:
            return "tta=none"
        scales = ", ".join(f"{s:g}" for s in self.scales)
        return (
            f"tta: softmax averaged over {self.passes} passes (hflip={str(self.hflip).lower()}, "
            f"scales [{scales}], each side rounded to a multiple of the network's stride)"
        )


def tta_options(cfg: DictConfig) -> TTAOptions:
    """`cfg.tta`, checked: one ConfigError line for an unknown key or a bad value."""
    node = cfg.get("tta")
    if node is None or node == "none":
        return TTAOptions()
    if node == "hflip":
        return TTAOptions(hflip=True)
    if not isinstance(node, DictConfig | Mapping):
        raise ConfigError(f"tta={node}: unknown; {USAGE}")
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"tta.{unknown[0]}: unknown key; tta has hflip (true or false) and scales (a list "
            "of positive numbers, e.g. tta.scales=[0.75,1,1.25])"
        )
    hflip = node.get("hflip", False)
    if not isinstance(hflip, bool):
        raise ConfigError(f"tta.hflip={hflip} must be true or false")
    scales = node.get("scales", [1.0])
    if isinstance(scales, ListConfig):
        scales = OmegaConf.to_container(scales)
    good = isinstance(scales, list | tuple) and scales
    good = good and all(
        isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) and s > 0
        for s in scales
    )
    if not good:
        raise ConfigError(
            f"tta.scales={scales} must be a non-empty list of numbers > 0, e.g. "
            "tta.scales=[0.75,1,1.25] (1: the size the network runs at)"
        )
    return TTAOptions(hflip=hflip, scales=tuple(float(s) for s in scales))


def scaled_side(side: int, scale: float, stride: int) -> int:
    """`side * scale` rounded to the nearest multiple of `stride` (halves up), at least `stride`."""
    return max(stride, math.floor(side * scale / stride + 0.5) * stride)


class TTA(nn.Module):
    """`net` under test-time augmentation: forward returns log(mean softmax) over the passes.

    Log-probabilities keep argmax and softmax-based scores as the averaged prediction gives them;
    a loss computed on them (evaluate's `test/loss`) is the loss of the averaged prediction.
    """

    def __init__(
        self, net: nn.Module, hflip: bool = False, scales: Sequence[float] = (1.0,), stride: int = 1
    ) -> None:
        super().__init__()
        self.net = net
        self.hflip = hflip
        self.scales = tuple(scales)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        flips = (False, True) if self.hflip else (False,)
        total: torch.Tensor | None = None
        for scale in self.scales:
            size = (scaled_side(height, scale, self.stride), scaled_side(width, scale, self.stride))
            resized = size != (height, width)
            xs = F.interpolate(x, size, mode="bilinear", align_corners=False) if resized else x
            for flip in flips:
                logits = self.net(xs.flip(-1) if flip else xs)  # (B, C, h, w)
                logits = logits.flip(-1) if flip else logits
                if resized:  # back to the input size, as the CLIs resize logits
                    logits = F.interpolate(
                        logits.float(), (height, width), mode="bilinear", align_corners=False
                    )  # (B, C, H, W)
                probs = logits.float().softmax(1)
                total = probs if total is None else total + probs
        assert total is not None
        mean = total / (len(self.scales) * len(flips))
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()  # no -inf where a prob is 0


def apply_tta(module: Any, options: TTAOptions) -> Any:
    """Replace `module.net` (a SegModule's) by its TTA wrapper when `options` is active.

    The stride is the checkpoint's network's (`module.hparams.net`, as `petseg.config` reads it).
    """
    if options.active:
        stride = model_stride(OmegaConf.create({"model": dict(module.hparams.net)}))
        module.net = TTA(module.net, options.hflip, options.scales, stride)
    return module
