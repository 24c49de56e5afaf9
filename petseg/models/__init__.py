"""Segmentation networks: pure torch, `forward(x) -> logits[B, num_classes, H, W]`."""

from petseg.models.segformer import SegFormer
from petseg.models.segnet import SegNet
from petseg.models.unet import UNet
from petseg.models.vit import ViTSeg

__all__ = ["SegFormer", "SegNet", "UNet", "ViTSeg"]
