"""Checks of a composed config that run before any data loads or any model trains.

Hydra already rejects unknown group options and misspelt keys (the config is a struct); this catches
values that compose fine but cannot work, with one line naming the key, the value and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from petseg.errors import ConfigError

# Keys of the model group that configure SegModule's handling of the network, not the network.
NET_SWITCHES = ("channels_last", "compile")


def net_config(cfg: DictConfig) -> dict[str, Any]:
    """The network's `_target_` config (resolved) without the speed switches in NET_SWITCHES."""
    net = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(net, dict)
    return {k: v for k, v in net.items() if k not in NET_SWITCHES}


def model_stride(cfg: DictConfig) -> int:
    """The factor by which the network downsamples, read without building it.

    A patch-based model's stride is its `patch_size`; the others declare a class attribute `stride`.
    """
    if cfg.model.get("patch_size"):
        return int(cfg.model.patch_size)
    return int(getattr(get_class(cfg.model._target_), "stride", 1))


def check_optimizer(cfg: DictConfig) -> None:
    lr = cfg.optimizer.get("lr")
    if lr is None or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be > 0 (e.g. optimizer.lr=1e-3)")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    if wd is not None and wd < 0:
        raise ConfigError(f"optimizer.weight_decay={wd} must be >= 0")


def check_image_size(cfg: DictConfig) -> None:
    size, stride = int(cfg.data.image_size), model_stride(cfg)
    if size % stride:
        lower, upper = max(stride, size // stride * stride), (size // stride + 1) * stride
        raise ConfigError(
            f"data.image_size={size} is not a multiple of {stride}, the stride of "
            f"{cfg.model._target_.rsplit('.', 1)[-1]}; use data.image_size={lower} or {upper}"
        )


def check_classes(cfg: DictConfig) -> None:
    num_classes = int(cfg.data.num_classes)
    if len(cfg.class_names) != num_classes:
        raise ConfigError(
            f"class_names has {len(cfg.class_names)} names but data.num_classes={num_classes}"
        )
    ignore = cfg.loss.get("ignore_index")
    if ignore is not None and ignore >= num_classes:
        raise ConfigError(
            f"loss.ignore_index={ignore} is out of range: use a class index 0..{num_classes - 1} "
            "to leave that class out of the loss (2 = border), or -100 to ignore nothing"
        )


def check_epochs(cfg: DictConfig) -> None:
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs != -1 and epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs} must be >= 1 (or -1 for no limit)")


def check_switches(cfg: DictConfig) -> None:
    compile_ = cfg.model.get("compile", False)
    if isinstance(compile_, str):
        from torch._dynamo import list_backends  # only here: importing dynamo takes a second

        if compile_ not in list_backends(exclude_tags=()):
            raise ConfigError(
                f"model.compile={compile_} is not a torch.compile backend: use true (inductor), "
                f"false, or one of {', '.join(list_backends())}"
            )
    elif not isinstance(compile_, bool):
        raise ConfigError(f"model.compile={compile_} must be true, false or a backend name")
    if not isinstance(cfg.model.get("channels_last", False), bool):
        raise ConfigError(f"model.channels_last={cfg.model.channels_last} must be true or false")


def find_last_checkpoint(log_dir: str | Path) -> Path | None:
    """The newest `checkpoints/last.ckpt` (an epoch's end) under log_dir.

    A mid-epoch `interrupted.ckpt` is used only when named: its epoch cannot repeat exactly.
    """
    found = list(Path(log_dir).glob("**/checkpoints/last.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_checkpoint(cfg: DictConfig) -> None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        if find_last_checkpoint(cfg.paths.log_dir) is None:
            raise ConfigError(
                f"ckpt_path=last: no checkpoints/last.ckpt under paths.log_dir={cfg.paths.log_dir}"
            )
    elif ckpt and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")


def validate(cfg: DictConfig) -> None:
    """Every check, cheapest first; raises ConfigError on the first problem."""
    check_optimizer(cfg)
    check_epochs(cfg)
    check_classes(cfg)
    check_switches(cfg)
    check_checkpoint(cfg)
    check_image_size(cfg)
