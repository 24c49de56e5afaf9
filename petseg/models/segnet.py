"""SegNet: a VGG-16-style encoder whose max-pooling indices drive the decoder's unpooling.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation", TPAMI 2017 (arXiv:1511.00561); layout as in Dhruv Matani's article series
"Efficient image segmentation using PyTorch" (SegNet part): input BatchNorm instead of dataset
normalisation, and `conv="dsc"` swaps every 3x3 conv for a depthwise-separable one.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from petseg.models.blocks import ConvKind, check_divisible, conv_block, init_conv_bn

# Encoder: output widths of each stage's 3x3 blocks; a 2x2 max-pool follows every stage.
ENCODER_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
# Decoder: channel chain of each stage after its unpool (512->512->512->256, ...); the last
# stage ends in num_classes.
DECODER_STAGES = ((512, 512, 512, 256), (256, 256, 256, 128), (128, 128, 64), (64, 64))


class SegNet(nn.Module):
    """SegNet with 4 pool/unpool steps (stride 16); pooling indices restore where maxima were."""

    stride = 16

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        conv: ConvKind = "standard",
        dilation: int = 1,
    ) -> None:
        """Build the encoder (conv stages + pools) and its mirror decoder (unpools + conv stages).

        Args:
            conv: "standard" 3x3 convs or "dsc" depthwise-separable ones (~11% of the parameters).
            dilation: dilation of the last encoder stage's convs (at 1/8 resolution, before its
                pool): a 3x3 kernel then spans 1 + 2*dilation pixels, a wider view of the coarsest
                features with the same parameters and output size.
        """
        super().__init__()
        self.input_norm = nn.BatchNorm2d(in_channels)  # learns the input scaling; no mean/std
        self.encoder = nn.ModuleList()
        c = in_channels
        for i, widths in enumerate(ENCODER_STAGES):
            d = dilation if i == len(ENCODER_STAGES) - 1 else 1
            blocks = []
            for w in widths:
                blocks.append(conv_block(c, w, conv, dilation=d))
                c = w
            self.encoder.append(nn.Sequential(*blocks))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.decoder = nn.ModuleList()
        for i, chain in enumerate(DECODER_STAGES):
            last_stage = i == len(DECODER_STAGES) - 1
            chain = (*chain, num_classes) if last_stage else chain
            blocks = []
            for j, (c_in, c_out) in enumerate(itertools.pairwise(chain)):
                # The final block keeps its BN but has no ReLU: logits must be free to go negative.
                relu = not (last_stage and j == len(chain) - 2)
                blocks.append(conv_block(c_in, c_out, conv, relu=relu))
            self.decoder.append(nn.Sequential(*blocks))
        self.apply(init_conv_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits."""
        check_divisible(x, self.stride, "SegNet downsamples 4x by 2")
        x = self.input_norm(x)
        indices, sizes = [], []
        for stage in self.encoder:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)  # (B, C, H/2, W/2) and where each max came from
            indices.append(idx)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes), strict=True):
            x = self.unpool(x, idx, output_size=size)  # (B, C, 2h, 2w), zeros off the maxima
            x = stage(x)
        return x  # (B, num_classes, H, W)
