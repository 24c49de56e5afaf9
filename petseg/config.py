"""Checks of a composed config that run before any data loads or any model trains.

Hydra already rejects unknown group options and misspelt keys (the config is a struct); this catches
values that compose fine but cannot work, with one line naming the key, the value and the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, open_dict

from petseg.data.oxford import IGNORE_INDEX, check_label_choice
from petseg.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# trainer.precision values Lightning 2.6 accepts (the supported list of lightning.fabric.connector:
# its precision strings, the ints and the legacy string aliases).
PRECISIONS = (
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
    "transformer-engine", "transformer-engine-float16",
    32, 16, 64, "32", "16", "64", "bf16",
    "auto",  # petseg's own: petseg.precision picks one of the above for the device
)  # fmt: skip


def compose_run(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
    """The config `python -m petseg.train <overrides>` would run with (its run folder
    `output_dir` when given: Hydra's own is set only inside a Hydra app)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def model_names() -> list[str]:
    """Every `model=<name>` choice, from the yaml files of the model group."""
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def model_stride(cfg: DictConfig) -> int:
    """The factor by which the network downsamples, read without building it.

    A patch-based model's stride is its `patch_size`; model=smp's depends on its node
    (`stride_for`); the others declare a class attribute `stride`.
    """
    if cfg.model.get("patch_size"):
        return int(cfg.model.patch_size)
    cls = get_class(cfg.model._target_)
    if hasattr(cls, "stride_for"):
        return int(cls.stride_for(cfg.model))
    return int(getattr(cls, "stride", 1))


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_optimizer(cfg: DictConfig) -> None:
    """Numeric options (those whose default in the optimizer's signature is a number or a tuple
    of numbers: lr, weight_decay, momentum, betas...) must be numbers; lr > 0, weight_decay >= 0.
    """
    lr = cfg.optimizer.get("lr")
    if lr is None:
        raise ConfigError("optimizer.lr is not set: add e.g. optimizer.lr=1e-3")
    try:
        defaults = inspect.signature(get_class(cfg.optimizer._target_)).parameters
    except Exception:  # not a class we can read: instantiating it names the problem
        defaults = {}
    for key, value in cfg.optimizer.items():
        default = defaults[key].default if key in defaults else None
        if is_number(default) and not is_number(value):
            raise ConfigError(
                f"optimizer.{key}={value} is not a number: use e.g. optimizer.{key}={default}"
            )
        numbers = isinstance(default, tuple) and default and all(map(is_number, default))
        if numbers and not (
            isinstance(value, ListConfig)
            and len(value) == len(default)
            and all(map(is_number, value))
        ):
            raise ConfigError(
                f"optimizer.{key}={value} must be {len(default)} numbers: use e.g. "
                f"optimizer.{key}=[{','.join(map(str, default))}]"
            )
    if not is_number(lr) or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be > 0 (e.g. optimizer.lr=1e-3)")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    if wd is not None and (not is_number(wd) or wd < 0):
        raise ConfigError(f"optimizer.weight_decay={wd} must be >= 0")


def check_image_size(cfg: DictConfig) -> None:
    size, stride = int(cfg.data.image_size), model_stride(cfg)
    if size % stride:
        lower, upper = max(stride, size // stride * stride), (size // stride + 1) * stride
        raise ConfigError(
            f"data.image_size={size} is not a multiple of {stride}, the stride of "
            f"{cfg.model._target_.rsplit('.', 1)[-1]}; use data.image_size={lower} or {upper}"
        )


def loss_ignore_indices(node: Any, key: str = "loss") -> dict[str, Any]:
    """Every `ignore_index` in the loss config (a combo's terms too), by its key."""
    found: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        for k, v in node.items():
            if k == "ignore_index":
                found[f"{key}.{k}"] = v
            else:
                found.update(loss_ignore_indices(v, f"{key}.{k}"))
    return found


def check_labels(cfg: DictConfig) -> None:
    """data.labels / data.border are known choices (before class_names, which they select), and
    border=ignore's label is the one the loss and the metrics ignore (SegModule's metrics take
    loss.ignore_index, -100 when unset)."""
    labels, border = cfg.data.get("labels", "trimap"), cfg.data.get("border", "keep")
    check_label_choice(labels, border)
    if border != "ignore":
        return
    for key, value in loss_ignore_indices(cfg.loss).items():
        if value != IGNORE_INDEX:
            raise ConfigError(
                f"data.border=ignore labels border pixels {IGNORE_INDEX}, but {key}={value} "
                f"ignores another label: set {key}={IGNORE_INDEX} (border pixels are then left "
                "out of the loss and the metrics)"
            )
    if cfg.get("metrics", {}).get("article_protocol"):
        raise ConfigError(
            "metrics.article_protocol=true scores every pixel as the article did: it needs "
            "data.border=keep"
        )


def check_classes(cfg: DictConfig) -> None:
    num_classes = int(cfg.data.num_classes)
    if len(cfg.class_names) != num_classes:
        raise ConfigError(
            f"class_names has {len(cfg.class_names)} names but data.num_classes={num_classes}"
        )
    outputs = cfg.model.get("num_classes")  # a wrapped library model may name it otherwise
    if outputs is not None and outputs != num_classes:
        raise ConfigError(
            f"model.num_classes={outputs} but the data has data.num_classes={num_classes} classes "
            f"({', '.join(cfg.class_names)}): drop the model.num_classes override (it follows "
            "data.num_classes), or change data.num_classes and class_names together"
        )
    ignore = cfg.loss.get("ignore_index")
    if ignore is not None and ignore >= num_classes:
        classes = ", ".join(f"{i} = {name}" for i, name in enumerate(cfg.class_names))
        raise ConfigError(
            f"loss.ignore_index={ignore} is out of range: use a class index 0..{num_classes - 1} "
            f"to leave that class out of the loss ({classes}), or -100 to ignore nothing"
        )
    weight = cfg.loss.get("weight")
    if isinstance(weight, ListConfig) and len(weight) != num_classes:
        raise ConfigError(
            f"loss.weight has {len(weight)} values but there are {num_classes} classes "
            f"({', '.join(cfg.class_names)}): give one per class, or loss.weight=auto"
        )


def check_epochs(cfg: DictConfig) -> None:
    epochs = cfg.trainer.get("max_epochs")
    if epochs is None:
        return
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise ConfigError(
            f"trainer.max_epochs={epochs} is not a whole number: use e.g. trainer.max_epochs=20 "
            "(or -1 for no limit)"
        )
    if epochs != -1 and epochs < 1:
        raise ConfigError(f"trainer.max_epochs={epochs} must be >= 1 (or -1 for no limit)")


def check_precision(cfg: DictConfig) -> None:
    precision = cfg.trainer.get("precision")
    if precision is None:  # Lightning's default, 32-true
        return
    valid = isinstance(precision, str | int) and not isinstance(precision, bool)
    if not (valid and precision in PRECISIONS):
        accepted = ", ".join(dict.fromkeys(map(str, PRECISIONS)))  # 32 and "32" read the same
        raise ConfigError(
            f"trainer.precision={precision} is not a Lightning precision: use one of {accepted}"
        )


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU accelerator needs a visible CUDA device, and as many as trainer.devices asks for.

    torch.cuda.device_count() counts through NVML where it can, without starting CUDA (DDP and
    the gpu_pool launcher still set devices up after this).
    """
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    count = torch.cuda.device_count()
    if count == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA device is visible: use trainer=cpu, "
            "or trainer.accelerator=auto (the GPU when there is one)"
        )
    devices = cfg.trainer.get("devices", "auto")
    wanted = len(devices) if isinstance(devices, ListConfig) else devices
    if is_number(wanted) and wanted > count:
        raise ConfigError(
            f"trainer.devices={devices} asks for {wanted} GPUs but only {count} visible: use "
            f"trainer.devices={count} or trainer.devices=auto (every visible GPU)"
        )


def check_switches(cfg: DictConfig) -> None:
    compile_ = cfg.perf.get("compile", False)
    if isinstance(compile_, str):
        from torch.compiler import list_backends

        if compile_ not in list_backends(exclude_tags=()):
            raise ConfigError(
                f"perf.compile={compile_} is not a torch.compile backend: use true (inductor), "
                f"false, or one of {', '.join(list_backends())}"
            )
    elif not isinstance(compile_, bool):
        raise ConfigError(f"perf.compile={compile_} must be true, false or a backend name")
    if not isinstance(cfg.perf.get("channels_last", False), bool):
        raise ConfigError(f"perf.channels_last={cfg.perf.channels_last} must be true or false")
    every = cfg.perf.get("train_metrics_every_n_steps", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(
            f"perf.train_metrics_every_n_steps={every} must be an integer >= 1 "
            "(1: every training batch, exact)"
        )


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
    check_precision(cfg)
    check_labels(cfg)  # before check_classes: the labels choice selects the classes
    check_classes(cfg)
    check_switches(cfg)
    check_checkpoint(cfg)
    check_image_size(cfg)
    check_accelerator(cfg)  # last: asks torch for the CUDA devices
