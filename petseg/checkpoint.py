"""Loading a SegModule from a checkpoint, the square size it runs at, and the device: the CLIs'.

evaluate, predict, export and the bench share these; none of them imports another CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from petseg.config import model_stride
from petseg.errors import ConfigError
from petseg.module import SegModule

DEFAULT_IMAGE_SIZE = 128  # data.image_size in conf/data/oxford.yaml


def load_module(ckpt_path: str | Path | None, article: bool = False) -> SegModule:
    """The SegModule a checkpoint describes, on CPU; a missing or bad file is a ConfigError."""
    if not ckpt_path:
        raise ConfigError("ckpt_path is not set; pass ckpt_path=<path to a .ckpt file>")
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path}: no such file; pass a checkpoint written by petseg.train "
            "(e.g. outputs/<date>/<time>/checkpoints/last.ckpt)"
        )
    try:
        net = torch.load(path, map_location="cpu", weights_only=False, mmap=True)[
            "hyper_parameters"
        ]["net"]
        if net.get("encoder_weights"):  # the state dict holds them: fetch nothing (offline too)
            net = {**net, "encoder_weights": None}
        return SegModule.load_from_checkpoint(
            path, map_location="cpu", article_protocol=article, net=net
        )
    except Exception as e:  # torch.load and Lightning raise many types for a bad file
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"ckpt_path={ckpt_path}: cannot load it as a petseg checkpoint "
            f"({type(e).__name__}: {reason}); pass a .ckpt written by petseg.train"
        ) from e


def run_image_size(ckpt_path: Path) -> tuple[int | None, Path]:
    """`data.image_size` of the run that wrote the checkpoint (`<run>/.hydra/config.yaml`)."""
    config = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return None, config
    try:
        size = OmegaConf.select(
            OmegaConf.load(config), "data.image_size", throw_on_resolution_failure=False
        )
    except Exception:  # an unreadable run config only loses this hint
        return None, config
    return (size if isinstance(size, int) and not isinstance(size, bool) else None), config


def resolve_image_size(size: Any, net: Mapping[str, Any], ckpt_path: str | Path) -> tuple[int, str]:
    """The square size the network runs at, and where it came from (for the log).

    `image_size=` wins; else the checkpoint's `net.image_size` (ViT); else the training run's
    `data.image_size` from the run folder beside the checkpoint (the checkpoint itself does not
    hold it: the DataModule saves no hyperparameters); else 128, the training default.
    """
    if size is not None:
        source = "image_size="
    elif net.get("image_size"):
        size, source = net["image_size"], "the checkpoint's net.image_size"
    else:
        size, config = run_image_size(Path(ckpt_path))
        source = f"data.image_size in {config}"
        if size is None:
            size, source = DEFAULT_IMAGE_SIZE, "the training default (no run config found)"
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"image_size={size} must be a positive integer (or null: automatic)")
    stride = model_stride(OmegaConf.create({"model": dict(net)}))
    if size % stride:
        lower, upper = max(stride, size // stride * stride), (size // stride + 1) * stride
        raise ConfigError(
            f"image_size={size} (from {source}) is not a multiple of {stride}, the stride of "
            f"{net['_target_'].rsplit('.', 1)[-1]}; use image_size={lower} or {upper}"
        )
    return size, source


def resolve_device(name: str | None) -> torch.device:
    """`auto`: the GPU when CUDA has one, else the CPU; otherwise any torch device string."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={name}: not a device ({e}); use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available here; use device=auto or cpu")
    return device
