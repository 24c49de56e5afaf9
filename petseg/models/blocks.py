"""Conv blocks shared by SegNet and UNet: 3x3 conv+BN+ReLU and its depthwise-separable twin.

The depthwise-separable conv follows MobileNets (Howard et al. 2017, arXiv:1704.04861): a 3x3
depthwise conv filters each channel alone, a 1x1 pointwise conv mixes channels, costing about
1/9 + 1/C_out of a regular 3x3 conv (see `python -m petseg.summary conv_vs_dsc`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ConvKind = Literal["standard", "dsc"]


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias: BN follows) + BatchNorm + optional ReLU; same spatial size out."""

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        # Identity keeps module names stable whether or not the block ends in a ReLU.
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 (per channel) then pointwise 1x1 (mixes channels), then BN + optional ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, dilation: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_channels,
            in_channels,
            3,
            padding=dilation,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()


def conv_block(
    in_channels: int,
    out_channels: int,
    conv: ConvKind = "standard",
    dilation: int = 1,
    relu: bool = True,
) -> nn.Sequential:
    """The 3x3 block every SegNet/UNet stage is made of, regular or depthwise-separable."""
    if conv == "standard":
        return ConvBNReLU(in_channels, out_channels, dilation, relu)
    if conv == "dsc":
        return DepthwiseSeparableConv(in_channels, out_channels, dilation, relu)
    raise ValueError(
        f"conv={conv!r} is not one of 'standard', 'dsc'; set model.conv to one of them"
    )


def check_divisible(x: torch.Tensor, multiple: int, why: str) -> None:
    """Fail early, with the fix, when the input size does not survive the network's downsampling."""
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"input {h}x{w} is not a multiple of {multiple} ({why}); "
            f"set data.image_size to a multiple of {multiple}"
        )


def init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) init for convs, unit BN; used with `Module.apply` by the CNNs.

    Fan-out counts groups (k*k*C_out/groups), unlike `kaiming_normal_`, which would give a
    depthwise conv C times too small a variance and vanishing outputs before BN statistics exist.
    """
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        fan_out = module.weight[0, 0].numel() * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_linear_norm(module: nn.Module) -> None:
    """Transformer init as ViT/timm: trunc-normal Linear (std 0.02), unit LayerNorm/BatchNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
