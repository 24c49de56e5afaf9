"""petseg.tta: hflip TTA is the hand-computed mean of the two passes' softmax, equals no TTA on a
mirror-symmetric input through a mirror-equivariant network, multi-scale runs every pass at a
multiple of the stride and returns input-size outputs; bad options are one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from petseg.errors import ConfigError
from petseg.models import UNet
from petseg.tta import TTA, TTAOptions, apply_tta, scaled_side, tta_options

from conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_net(symmetric: bool = False) -> nn.Module:
    """Two random 3x3 convs; `symmetric`: kernels mirrored onto themselves, so the network
    commutes with a horizontal flip (zero padding is symmetric too)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    if symmetric:
        with torch.no_grad():
            for conv in (net[0], net[2]):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return net.eval()


def test_hflip_is_the_mean_of_the_two_passes() -> None:
    net = conv_net()
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        plain = net(x).softmax(1)
        mirrored = net(x.flip(-1)).flip(-1).softmax(1)
        out = TTA(net, hflip=True)(x)
    assert out.shape == (2, 3, 8, 12)
    torch.testing.assert_close(out.exp(), (plain + mirrored) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the two passes differ: not vacuous


def test_hflip_on_a_symmetric_input_equals_no_tta() -> None:
    """x = flip(x) and f(flip(x)) = flip(f(x)): both passes give f(x), so TTA changes nothing."""
    net = conv_net(symmetric=True)
    half = torch.rand(1, 3, 8, 6)
    x = torch.cat([half, half.flip(-1)], -1)  # (1, 3, 8, 12), mirror-symmetric
    with torch.no_grad():
        plain = net(x)
        out = TTA(net, hflip=True)(x)
    torch.testing.assert_close(out, plain.log_softmax(1), rtol=0, atol=1e-5)
    assert torch.equal(out.argmax(1), plain.argmax(1))


class SizeRecorder(nn.Module):
    """Logits from a 1x1 conv; records each input size and refuses sides off the stride."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(3, 3, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0, x.shape
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_multiscale_runs_at_stride_multiples_and_returns_input_size() -> None:
    """64x96 at stride 32: 0.75 -> 48x72 rounds to 64x64, 1.25 -> 80x120 to 96x128."""
    net = SizeRecorder(stride=32)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = TTA(net, hflip=True, scales=(0.75, 1.0, 1.25), stride=32)(x)
    assert net.sizes == [(64, 64), (64, 64), (64, 96), (64, 96), (96, 128), (96, 128)]
    assert out.shape == (2, 3, 64, 96)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, 64, 96))  # log-probabilities
    # The same as averaging by hand: each scale's logits resized back bilinearly.
    with torch.no_grad():
        expected = 0
        for size in ((64, 64), (64, 96), (96, 128)):
            xs = F.interpolate(x, size, mode="bilinear", align_corners=False)
            for logits in (net.conv(xs), net.conv(xs.flip(-1)).flip(-1)):
                back = F.interpolate(logits, (64, 96), mode="bilinear", align_corners=False)
                expected = expected + back.softmax(1) / 6
    torch.testing.assert_close(out.exp(), expected, rtol=0, atol=1e-6)


def test_scaled_side_rounds_to_the_stride() -> None:
    assert scaled_side(128, 0.75, 32) == 96
    assert scaled_side(128, 1.25, 32) == 160
    assert scaled_side(64, 0.75, 32) == 64  # 48 is halfway: up
    assert scaled_side(32, 0.25, 32) == 32  # at least one stride
    assert scaled_side(30, 1.1, 1) == 33


def test_options_and_shorthands() -> None:
    evaluate = compose_config([], "evaluate")
    assert tta_options(evaluate) == TTAOptions() and not TTAOptions().active  # off by default
    assert not tta_options(compose_config([], "predict")).active
    assert tta_options(compose_config(["tta=hflip"], "evaluate")) == TTAOptions(hflip=True)
    assert not tta_options(compose_config(["tta=none"], "predict")).active
    scales = compose_config(["tta.hflip=true", "tta.scales=[0.75,1,1.25]"], "predict")
    options = tta_options(scales)
    assert options == TTAOptions(True, (0.75, 1.0, 1.25)) and options.passes == 6
    assert "6 passes" in options.describe()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["tta.scales=[0.75,0]"],
            r"^tta\.scales=\[0\.75, 0\] must be a non-empty list of numbers > 0",
        ),
        (["tta.scales=[-1]"], r"^tta\.scales=\[-1\] must be"),
        (["tta.scales=[]"], r"^tta\.scales=\[\] must be"),
        (["tta.scales=1.5"], r"^tta\.scales=1\.5 must be"),
        (["tta.scales=[a]"], r"^tta\.scales=\['a'\] must be"),
        (["+tta.vflip=true"], r"^tta\.vflip: unknown key; tta has hflip .* and scales"),
        (["tta=vflip"], r"^tta=vflip: unknown; use tta=none, tta=hflip, or"),
        (["tta.hflip=maybe"], r"^tta\.hflip=maybe must be true or false"),
    ],
)
def test_bad_options_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        tta_options(compose_config(overrides, "evaluate"))
    assert "\n" not in str(info.value)


def test_apply_tta_wraps_only_when_on() -> None:
    """Off: the module keeps its network (scores exactly as without TTA). On: the wrapper, with
    the stride of the checkpoint's network config."""

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hparams = OmegaConf.create({"net": {"_target_": "petseg.models.UNet"}})
            self.net = conv_net()

    module = Module()
    net = module.net
    assert apply_tta(module, TTAOptions()).net is net
    wrapped = apply_tta(module, TTAOptions(hflip=True)).net
    assert isinstance(wrapped, TTA) and wrapped.net is net
    assert wrapped.stride == UNet.stride == 16
