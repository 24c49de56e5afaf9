"""U-Net: a contracting path and a symmetric expanding path joined by concatenated skips.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015 (arXiv:1505.04597); here with padded convs + BatchNorm so the output keeps the input
size, and the shared 3x3 / depthwise-separable blocks of `blocks.py`.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

from petseg.models.blocks import ConvKind, check_divisible, conv_block, init_conv_bn

Upsampling = Literal["transpose", "bilinear"]
NUM_DOWN = 4  # 2x2 max-pools, so the input must be a multiple of 2**4


def double_conv(
    in_channels: int, out_channels: int, conv: ConvKind, dilation: int = 1
) -> nn.Sequential:
    """Two 3x3 blocks, the unit of every U-Net stage."""
    return nn.Sequential(
        conv_block(in_channels, out_channels, conv, dilation),
        conv_block(out_channels, out_channels, conv, dilation),
    )


def upsample(in_channels: int, mode: Upsampling) -> nn.Module:
    """Double the size and halve the channels, learned (transpose) or fixed (bilinear + 1x1)."""
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
    if mode == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, in_channels // 2, 1),
        )
    raise ValueError(
        f"upsampling={mode!r} is not one of 'transpose', 'bilinear'; set model.upsampling"
    )


class UpStage(nn.Module):
    """Upsample, concatenate the encoder's skip of the same size, double conv."""

    def __init__(self, in_channels: int, conv: ConvKind, mode: Upsampling) -> None:
        super().__init__()
        self.up = upsample(in_channels, mode)
        self.conv = double_conv(in_channels, in_channels // 2, conv)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C/2, 2h, 2w) -> (B, C/2, 2h, 2w)."""
        x = self.up(x)  # (B, C/2, 2h, 2w)
        return self.conv(torch.cat([skip, x], dim=1))  # cat: (B, C, 2h, 2w)


class UNet(nn.Module):
    """U-Net with 4 downsamplings (stride 16), widths base_width * (1, 2, 4, 8, 16)."""

    stride = 2**NUM_DOWN

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        base_width: int = 64,
        conv: ConvKind = "standard",
        upsampling: Upsampling = "transpose",
        dilation: int = 1,
    ) -> None:
        """Build the encoder, bottleneck and decoder.

        Args:
            conv: "standard" 3x3 convs or "dsc" depthwise-separable ones.
            upsampling: "transpose" (learned 2x2 stride-2 conv) or "bilinear" (+ 1x1 conv).
            dilation: dilation of the deepest stage's convs (the bottleneck at 1/16 resolution),
                widening its receptive field with the same parameters and size.
        """
        super().__init__()
        widths = [base_width * 2**i for i in range(NUM_DOWN + 1)]  # 64, 128, 256, 512, 1024
        self.stem = double_conv(in_channels, widths[0], conv)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            double_conv(c_in, c_out, conv, dilation if i == NUM_DOWN - 1 else 1)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths))
        )
        self.up = nn.ModuleList(UpStage(c, conv, upsampling) for c in reversed(widths[1:]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.apply(init_conv_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits."""
        check_divisible(x, self.stride, f"UNet downsamples {NUM_DOWN}x by 2")
        x = self.stem(x)  # (B, w, H, W)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(self.pool(x))  # (B, 2c, h/2, w/2)
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)  # (B, c/2, 2h, 2w)
        return self.head(x)  # (B, num_classes, H, W)
