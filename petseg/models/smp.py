"""Any segmentation_models.pytorch architecture over any of its encoders, pretrained or not.

Iakubovskii, "Segmentation Models Pytorch" (github.com/qubvel-org/segmentation_models.pytorch):
12 architectures (U-Net, FPN, DeepLabV3+, SegFormer, ...) over 800+ encoders, through timm.
The wrapper applies the encoder's input normalisation itself (mean/std as buffers, so they travel
with the checkpoint), so data, evaluate, predict and export stay model-agnostic; it loads encoder
weights by name (smp downloads them into the user's cache) or from a local state-dict file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import get_encoder_names, get_preprocessing_params
from torch import nn

from petseg.errors import ConfigError
from petseg.models.blocks import check_divisible

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


def is_weights_file(weights: str) -> bool:
    """A path (has a folder separator or a weights-file suffix), not a name smp knows."""
    return "/" in weights or "\\" in weights or weights.endswith(WEIGHT_FILE_SUFFIXES)


def arch_class(arch: str) -> type[nn.Module]:
    try:
        return smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
    except KeyError:
        names = ", ".join(smp.MODEL_ARCHITECTURES_MAPPING)
        raise ConfigError(
            f"model.arch={arch} is not an smp architecture: use one of {names}"
        ) from None


def arch_default(arch: str, name: str, fallback: Any) -> Any:
    """The default of an smp architecture's constructor argument (e.g. PSPNet's encoder_depth 3)."""
    parameter = inspect.signature(arch_class(arch)).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def smp_stride(
    arch: str, encoder_depth: int | None = None, options: Mapping[str, Any] | None = None
) -> int:
    """The factor H and W must be a multiple of: min(encoder output stride, 2**depth), as smp's
    encoders compute it, read from the arguments without building the network."""
    depth = encoder_depth if encoder_depth is not None else arch_default(arch, "encoder_depth", 5)
    output_stride = (options or {}).get("encoder_output_stride")
    if output_stride is None:
        output_stride = arch_default(arch, "encoder_output_stride", 32)
    return min(int(output_stride), 2 ** int(depth))


def one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_names(arch: str, encoder_name: str, weights: str | None) -> None:
    """Misspelt names fail here, before any download is tried."""
    arch_class(arch)
    if encoder_name.startswith("tu-"):
        import timm

        if not timm.is_model(encoder_name[3:]):
            raise ConfigError(
                f"model.encoder_name={encoder_name}: timm has no model {encoder_name[3:]!r} "
                "(timm.list_models() lists them)"
            )
        return
    if encoder_name not in get_encoder_names():
        raise ConfigError(
            f"model.encoder_name={encoder_name} is not an smp encoder: use e.g. resnet34, "
            "efficientnet-b0, mit_b0, or tu-<timm model> "
            "(segmentation_models_pytorch.encoders.get_encoder_names() lists them)"
        )
    if weights is not None and not is_weights_file(weights):
        known = smp.encoders.encoders[encoder_name]["pretrained_settings"]
        if weights not in known:
            raise ConfigError(
                f"model.encoder_weights={weights}: smp has no such weights for {encoder_name}; "
                f"use one of {', '.join(known) or '(none)'}, a local state-dict file, or null"
            )


def check_options(arch: str, encoder_name: str, options: Mapping[str, Any]) -> None:
    """Unknown architecture options fail: smp hands them to the encoder, whose own ones (all but
    timm's, tu-*) drop them silently."""
    if encoder_name.startswith("tu-"):
        return
    parameters = inspect.signature(arch_class(arch)).parameters
    named = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    owned = {"encoder_name", "encoder_weights", "encoder_depth", "in_channels", "classes"}
    unknown = [k for k in options if k not in named or k in owned]
    if unknown:
        allowed = ", ".join(n for n in named if n not in owned)
        raise ConfigError(
            f"model.options has {', '.join(map(str, unknown))}, not an option of smp's "
            f"{arch_class(arch).__name__} here: use {allowed} (or the model.* key itself)"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (tensors only: weights_only loading)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"model.encoder_weights={path}: cannot read it as a state dict ({one_line(error)})"
        ) from error
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ConfigError(
            f"model.encoder_weights={path} is not a state dict of tensors: save one with "
            "torch.save(net.encoder.state_dict(), path)"
        )
    return dict(state)


def load_encoder_file(encoder: nn.Module, path: Path, encoder_name: str) -> None:
    """Strict: every key there with its shape, nothing extra; else one line saying what differs."""
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights={path}: no such file; copy a state dict of the {encoder_name} "
            "encoder there, or use model.encoder_weights=null for random initialisation"
        )
    state = read_state_dict(path)
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ConfigError(
            f"model.encoder_weights={path} does not match the {encoder_name} encoder "
            f"({'; '.join(problems)}): save it with torch.save(net.encoder.state_dict(), path) "
            "from the same encoder_name and encoder_depth"
        )
    encoder.load_state_dict(state)


class SMPModel(nn.Module):
    """An smp network (`arch` over `encoder_name`) with the encoder's own input normalisation.

    Args:
        arch: an smp architecture, e.g. unet, fpn, deeplabv3plus, segformer (case-insensitive).
        encoder_name: an smp encoder (resnet34, efficientnet-b0, mit_b0, ...) or tu-<timm model>.
        encoder_weights: null (random init), a name smp knows (imagenet: downloaded into the
            user's cache), or a local file with a state dict of the encoder (.pth, .safetensors).
        encoder_depth: encoder stages used (null: the architecture's default); the stride is
            min(encoder output stride, 2**encoder_depth).
        mean, std: input normalisation for x in [0, 1]; null: the pretrained weights' own
            (ImageNet's without named weights).
        options: further keyword arguments of the smp architecture (decoder_channels,
            encoder_output_stride, ...), passed as given.
    """

    # The largest stride at encoder_depth 5 (what petseg.config checks data.image_size against,
    # without building the network); an instance's own `stride` is its encoder's.
    stride = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        arch: str = "unet",
        encoder_name: str = "resnet34",
        encoder_weights: str | None = None,
        encoder_depth: int | None = 5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        weights = str(encoder_weights) if encoder_weights is not None else None
        check_names(arch, encoder_name, weights)
        check_options(arch, encoder_name, options or {})
        from_file = weights is not None and is_weights_file(weights)
        kwargs = dict(options or {})
        if encoder_depth is not None:
            kwargs["encoder_depth"] = encoder_depth
        try:
            self.net = smp.create_model(
                arch,
                encoder_name=encoder_name,
                encoder_weights=None if from_file else weights,
                in_channels=in_channels,
                classes=num_classes,
                **kwargs,
            )
        except (TypeError, ValueError) as error:  # a bad architecture option, before any download
            raise ConfigError(
                f"model={arch} with encoder {encoder_name}: {one_line(error)} "
                "(check model.options and model.encoder_depth)"
            ) from error
        except Exception as error:
            if weights is None or from_file:
                raise
            raise ConfigError(
                f"model.encoder_weights={weights}: could not download the {weights} weights of "
                f"{encoder_name} ({one_line(error)}); offline, copy a state dict of the encoder "
                "and set model.encoder_weights=/path/to/encoder.pth, or use "
                "model.encoder_weights=null for random initialisation"
            ) from error
        if from_file:
            load_encoder_file(self.net.encoder, Path(weights), encoder_name)
        self.stride = int(self.net.encoder.output_stride)  # type: ignore[misc]
        # An encoder trained on BGR input gets its channels flipped (mean/std are in its order).
        self.bgr = False
        if mean is None or std is None:
            mean, std, self.bgr = preprocessing(encoder_name, None if from_file else weights)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @staticmethod
    def stride_for(model: Mapping[str, Any]) -> int:
        """The stride the yaml node `model` builds, read without building it (for the config
        check: it depends on arch, encoder_depth and options.encoder_output_stride)."""
        return smp_stride(
            model.get("arch", "unet"), model.get("encoder_depth", 5), model.get("options")
        )

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def freeze_encoder(self) -> None:
        """Encoder weights fixed and its norm layers' running statistics kept (smp's own switch)."""
        self.net.freeze_encoder()

    def unfreeze_encoder(self) -> None:
        self.net.unfreeze_encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> logits (B, num_classes, H, W)."""
        check_divisible(x, self.stride, f"the stride of the {self.encoder_label} encoder")
        if self.bgr:
            x = x.flip(1)
        return self.net((x - self.mean) / self.std)

    @property
    def encoder_label(self) -> str:
        return type(self.net.encoder).__name__


def preprocessing(encoder_name: str, weights: str | None) -> tuple[list[float], list[float], bool]:
    """The mean/std the named weights were trained with (smp/timm's pretrained config), in [0, 1]
    input units, and whether they expect BGR; ImageNet's without named weights (random init, or
    a local file: set model.mean/std if its weights were trained otherwise)."""
    if weights is None:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), False
    try:
        params = get_preprocessing_params(encoder_name, pretrained=weights)
    except Exception as error:  # the weights loaded, so this is their config.json, cached
        raise ConfigError(
            f"model.encoder_weights={weights}: no preprocessing config for {encoder_name} "
            f"({one_line(error)}); set model.mean and model.std"
        ) from error
    # Input range folded into the buffers: (255 x - m) / s == (x - m/255) / (s/255).
    top = float(max(params.get("input_range") or [0, 1]))
    mean = [m / top for m in params["mean"]]
    std = [s / top for s in params["std"]]
    return mean, std, params.get("input_space", "RGB") == "BGR"
