"""Every network: builds from its yaml, keeps the contract, learns, fails early on bad sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petseg.models import SegFormer, SegNet, UNet, ViTSeg
from petseg.models.vit import patchify, unpatchify

from conftest import compose_config

MODEL_NAMES = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, 1 thread


def build(name: str, *overrides: str) -> nn.Module:
    """The network `model=<name>` builds in training, at 64 px unless overridden; smp presets
    with random encoder weights (offline: their yaml says imagenet)."""
    offline = ["model.encoder_weights=null"] if name.startswith("smp") else []
    cfg = compose_config([f"model={name}", "data.image_size=64", *offline, *overrides])
    return hydra.utils.instantiate(cfg.model)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def disk_batch(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images of a noisy disk; mask: disk 0 (pet), ring at its edge 2 (border), rest 1."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for cy, cx, r in [(0.45, 0.5, 0.25), (0.6, 0.4, 0.3)]:
        dist = ((yy - cy * size) ** 2 + (xx - cx * size) ** 2).sqrt()  # (S, S)
        mask = torch.ones(size, size, dtype=torch.long)
        mask[dist <= r * size + 1.5] = 2
        mask[dist < r * size - 1.5] = 0
        colour = torch.tensor([0.9, 0.5, 0.2]).view(3, 1, 1)
        noise = 0.1 * torch.randn(3, size, size, generator=g)
        images.append((dist < r * size).float() * colour + noise)  # (3, S, S)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name: str) -> None:
    """Shape, finite logits, and a gradient on every parameter (a dead branch would show here)."""
    torch.manual_seed(0)
    net = build(name)
    x = torch.randn(2, 3, 64, 64)
    logits = net(x)
    assert logits.shape == (2, 3, 64, 64)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("segnet", 15_274_892), ("segnet_dsc", 1_749_671), ("vit", 86_284_806)],
)
def test_parameter_count(name: str, expected: int) -> None:
    """The article's counts at 3 classes (ViT at its 128 px training size)."""
    assert n_params(build(name, "data.image_size=128")) == expected


def test_segformer_b0_size() -> None:
    """SegFormer-B0 is ~3.7M parameters (3.3M encoder + decoder) at 3 classes."""
    assert 3_500_000 <= n_params(build("segformer")) <= 4_000_000


# (name, small network, Adam lr, step budget, image size). lr 1e-2 lets SegNet's final BN scale
# its logits up; SegFormer predicts at 1/4, so it gets 64 px to resolve the 3 px border ring.
OVERFIT_CASES: list[tuple[str, Callable[[], nn.Module], float, int, int]] = [
    ("segnet", lambda: SegNet(), 1e-2, 60, 32),
    ("segnet_dsc", lambda: SegNet(conv="dsc"), 1e-2, 80, 32),
    ("unet", lambda: UNet(base_width=8), 1e-2, 60, 32),
    (
        "unet_dsc_bilinear",
        lambda: UNet(base_width=8, conv="dsc", upsampling="bilinear"),
        1e-2,
        80,
        32,
    ),
    (
        "vit",
        lambda: ViTSeg(
            image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, dropout=0.0
        ),
        1e-3,
        120,
        32,
    ),
    (
        "segformer",
        lambda: SegFormer(
            widths=(16, 32, 32, 64), num_heads=(1, 1, 1, 2), decoder_dim=64, drop_path=0.0
        ),
        3e-3,
        80,
        64,
    ),
]


@pytest.mark.parametrize(
    ("make", "lr", "max_steps", "size"),
    [case[1:] for case in OVERFIT_CASES],
    ids=[case[0] for case in OVERFIT_CASES],
)
def test_overfits_one_batch(
    make: Callable[[], nn.Module], lr: float, max_steps: int, size: int
) -> None:
    """Training loss on one fixed batch falls below 20% of its start within the step budget."""
    torch.manual_seed(0)
    assert_overfits(make(), *disk_batch(size), lr=lr, max_steps=max_steps)


def assert_overfits(
    net: nn.Module, x: torch.Tensor, mask: torch.Tensor, lr: float, max_steps: int
) -> None:
    """Adam on one batch: the loss falls below 20% of its start within max_steps."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    first = loss = None
    for _ in range(max_steps):
        loss = F.cross_entropy(net(x), mask)
        first = first or loss.item()
        if loss.item() < 0.2 * first:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first, f"loss {first:.3f} -> {loss.item():.3f} in {max_steps} steps"


@pytest.mark.parametrize(
    ("net", "size", "multiple"),
    [
        (SegNet(conv="dsc"), 100, 16),
        (UNet(base_width=8), 72, 16),
        (ViTSeg(image_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2), 40, 16),
        (SegFormer(widths=(8, 16, 16, 16), num_heads=(1, 1, 1, 1)), 48, 32),
    ],
    ids=["segnet", "unet", "vit", "segformer"],
)
def test_size_not_multiple_of_stride(net: nn.Module, size: int, multiple: int) -> None:
    """A size the network cannot round-trip fails before any compute, naming size and fix."""
    message = f"input {size}x{size} is not a multiple of {multiple} .*set data.image_size"
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(1, 3, size, size))


def test_vit_runs_at_another_resolution() -> None:
    """Position embeddings learned for 128 px are interpolated to a 256 px (and non-square) grid."""
    net = ViTSeg(image_size=128, patch_size=16, embed_dim=32, depth=1, num_heads=2).eval()
    count = n_params(net)
    with torch.inference_mode():
        assert net(torch.randn(1, 3, 256, 256)).shape == (1, 3, 256, 256)
        assert net(torch.randn(1, 3, 128, 192)).shape == (1, 3, 128, 192)
        assert net.position_embedding((8, 8)) is net.pos_embed  # the training grid: untouched
    assert n_params(net) == count


def test_vit_patches_match_unfold_and_fold() -> None:
    """The reshape-based patching equals nn.Unfold, and unpatchify inverts it."""
    x = torch.randn(2, 3, 32, 48)
    patches = patchify(x, 16)  # (2, 6, 768)
    assert torch.equal(patches, F.unfold(x, 16, stride=16).transpose(1, 2))
    assert torch.equal(unpatchify(patches, 16, (2, 3)), x)


@pytest.mark.parametrize(
    "make",
    [lambda d: SegNet(conv="dsc", dilation=d), lambda d: UNet(base_width=8, dilation=d)],
    ids=["segnet", "unet"],
)
def test_dilation_keeps_shape_and_parameters(make: Callable[[int], nn.Module]) -> None:
    """Dilation changes what the deepest convs see, not the parameter shapes or output size."""
    x = torch.randn(1, 3, 64, 64)
    outputs = []
    for dilation in (1, 2):
        torch.manual_seed(0)
        net = make(dilation).eval()
        with torch.inference_mode():
            outputs.append(net(x))
    assert outputs[0].shape == outputs[1].shape == (1, 3, 64, 64)
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: SegNet(conv="depthwise"), "model.conv"),
        (lambda: UNet(upsampling="nearest"), "model.upsampling"),
        (lambda: ViTSeg(image_size=100), "model.image_size"),
        (lambda: ViTSeg(embed_dim=100, num_heads=8), "model.num_heads"),
        (lambda: SegFormer(widths=(32, 64, 160)), "conf/model/"),
    ],
    ids=["conv", "upsampling", "vit_image_size", "vit_heads", "segformer_stages"],
)
def test_bad_option_names_the_fix(make: Callable[[], nn.Module], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        make()
