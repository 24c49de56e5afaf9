"""SegFormer: a hierarchical Mix Transformer encoder and a lightweight all-MLP decoder.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021 (arXiv:2105.15203). Overlapping patch embeddings give 4 scales (1/4 .. 1/32);
attention shrinks keys/values by a strided conv (sequence reduction); a 3x3 depthwise conv in
the FFN (Mix-FFN) supplies position information, so there are no position embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petseg.models.blocks import check_divisible, init_conv_bn, init_linear_norm


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training (Huang et al. 2016)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...), each sample zeroed with probability p, the rest scaled 1/(1-p)."""
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride (patches overlap, keeping local continuity) + LayerNorm."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, h*w, D) and the grid (h, w)."""
        x = self.proj(x)  # (B, D, h, w)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a grid shrunk sr_ratio x per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"width {dim} is not divisible by its num_heads={num_heads}; "
                "set model.num_heads so each divides the matching model.widths entry"
            )
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:  # N keys -> N / sr_ratio**2 keys: attention costs N^2 / R^2
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) tokens on an h x w grid -> (B, N, D)."""
        b, n, d = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, d // heads).transpose(1, 2)  # (B, heads, N, D/heads)
        if self.sr_ratio > 1:
            kv = x.transpose(1, 2).reshape(b, d, *grid)  # (B, D, h, w)
            kv = self.sr(kv).flatten(2).transpose(1, 2)  # (B, N/R^2, D)
            kv = self.norm(kv)
        else:
            kv = x
        kv = self.kv(kv).reshape(b, -1, 2, heads, d // heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, heads, N', D/heads)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear; the conv leaks position into the tokens."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = self.fc1(x)  # (B, N, 4D)
        b, _, c = x.shape
        x = self.conv_dw(x.transpose(1, 2).reshape(b, c, *grid))  # (B, 4D, h, w)
        x = self.drop(self.act(x.flatten(2).transpose(1, 2)))  # (B, N, 4D)
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-LN transformer block with efficient attention and Mix-FFN."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class Stage(nn.Module):
    """One encoder scale: overlapping patch embedding, blocks, LayerNorm; returns a feature map."""

    def __init__(self, patch_embed: OverlapPatchEmbed, blocks: list[Block], dim: int) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, H/s, W/s) with s the patch embedding's stride."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        for block in self.blocks:
            x = block(x, grid)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, D, h, w)


class SegFormer(nn.Module):
    """SegFormer (defaults: MiT-B0, ~3.7M parameters at 3 classes); stride 32."""

    stride = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        widths: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: int = 4,
        decoder_dim: int = 256,
        dropout: float = 0.0,
        drop_path: float = 0.1,
    ) -> None:
        """Build the 4-stage Mix Transformer encoder and the all-MLP decoder.

        Args:
            widths, depths, num_heads, sr_ratios: per stage (1/4, 1/8, 1/16, 1/32 of the input).
            dropout: after attention/FFN projections and before the classifier.
            drop_path: stochastic-depth rate, rising linearly to this value over all blocks.
        """
        super().__init__()
        per_stage = (len(widths), len(depths), len(num_heads), len(sr_ratios))
        if set(per_stage) != {4}:
            raise ValueError(
                f"widths, depths, num_heads, sr_ratios need 4 entries each, got {per_stage}; "
                "fix them in conf/model/"
            )
        rates = iter(torch.linspace(0, drop_path, sum(depths)).tolist())  # one per block
        self.stages = nn.ModuleList()
        c = in_channels
        for i, (dim, depth, heads, sr) in enumerate(
            zip(widths, depths, num_heads, sr_ratios, strict=True)
        ):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            blocks = [Block(dim, heads, sr, mlp_ratio, dropout, next(rates)) for _ in range(depth)]
            self.stages.append(Stage(OverlapPatchEmbed(c, dim, kernel, stride), blocks, dim))
            c = dim
        # All-MLP decoder: a per-pixel Linear (1x1 conv) unifies each scale's channels.
        self.linear_c = nn.ModuleList(nn.Conv2d(w, decoder_dim, 1) for w in widths)
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(len(widths) * decoder_dim, decoder_dim, 1, bias=False),
            nn.BatchNorm2d(decoder_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(decoder_dim, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the official code: trunc-normal linears, fan-out He convs, unit norms."""
        self.apply(init_linear_norm)
        self.apply(init_conv_bn)
        # Small classifier weights (as mmseg's decode heads): near-uniform first predictions.
        nn.init.normal_(self.linear_pred.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits."""
        check_divisible(x, self.stride, "SegFormer's last stage is at 1/32")
        size = x.shape[-2:]
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H/4, W/4), (B, C_i, H/8, W/8), ...
            features.append(x)
        quarter = features[0].shape[-2:]
        # The official decoder concatenates the coarsest scale first.
        x = torch.cat(
            [
                F.interpolate(linear(f), size=quarter, mode="bilinear", align_corners=False)
                for linear, f in reversed(list(zip(self.linear_c, features, strict=True)))
            ],
            dim=1,
        )  # (B, 4*decoder_dim, H/4, W/4)
        x = self.linear_pred(self.dropout(self.linear_fuse(x)))  # (B, num_classes, H/4, W/4)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
