"""ViTSeg: a plain Vision Transformer that predicts a patch of class logits per token.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021 (arXiv:2010.11929); the segmentation variant follows Dhruv Matani's article series
"Efficient image segmentation using PyTorch" (vision transformer part): input BatchNorm, a shared
linear patch embedding, randn-initialised learned position embeddings, pre-LN blocks, and a
linear head whose p*p*num_classes outputs are folded back into the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from petseg.models.blocks import check_divisible, init_linear_norm


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): non-overlapping p x p patches, row-major (nn.Unfold order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, K*p*p) -> (B, K, h*p, w*p): the inverse of `patchify` (nn.Fold order)."""
    b, _, d = x.shape
    h, w = grid
    k = d // (p * p)
    x = x.reshape(b, h, w, k, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, K, h, p, w, p)
    return x.reshape(b, k, h * p, w * p)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, computed by SDPA."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"embed_dim={dim} is not divisible by num_heads={num_heads}; "
                "set model.num_heads to a divisor of model.embed_dim"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        # Biases as in nn.MultiheadAttention, which the article uses (in_proj and out_proj).
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, D/heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSeg(nn.Module):
    """ViT for segmentation (stride = patch_size); runs at other sizes by resizing `pos_embed`."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        image_size: int = 128,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 8,
        dropout: float = 0.2,
    ) -> None:
        """Build the patch embedding, position embeddings, blocks and per-patch head.

        Args:
            image_size: the side the position embeddings are learned for; other sizes (multiples
                of patch_size) interpolate them bicubically to the input's patch grid.
            dropout: on attention weights and after each MLP.
        """
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not a multiple of patch_size={patch_size}; "
                "set model.image_size (data.image_size) to a multiple of model.patch_size"
            )
        self.patch_size = patch_size
        self.grid = image_size // patch_size  # position embeddings are learned on grid x grid
        self.input_norm = nn.BatchNorm2d(in_channels)  # learns the input scaling; no mean/std
        self.patch_embed = nn.Linear(in_channels * patch_size**2, embed_dim)
        self.pos_embed = nn.Parameter(torch.empty(self.grid**2, embed_dim))  # (N, D)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, dropout) for _ in range(depth)))
        self.head = nn.Linear(embed_dim, num_classes * patch_size**2)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal linears and unit norms as ViT/timm; randn positions as the article."""
        self.apply(init_linear_norm)
        nn.init.normal_(self.pos_embed)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(N, D) learned on the training grid -> (h*w, D) for the input's h x w patch grid."""
        if grid == (self.grid, self.grid):
            return self.pos_embed
        d = self.pos_embed.shape[1]
        pos = self.pos_embed.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)  # (1, D, h, w)
        return pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits."""
        p = self.patch_size
        check_divisible(x, p, f"ViTSeg cuts {p}x{p} patches")
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = patchify(self.input_norm(x), p)  # (B, N, C*p*p)
        x = self.patch_embed(x) + self.position_embedding(grid)  # (B, N, D)
        x = self.blocks(x)  # (B, N, D)
        return unpatchify(self.head(x), p, grid)  # (B, N, K*p*p) -> (B, K, H, W)
