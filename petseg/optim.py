"""The optimizer and learning-rate schedule of a SegModule, from their `_target_` configs."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate

# Optimizers with a fused CUDA kernel (one launch for every parameter), used when on CUDA.
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def use_fused(
    optimizer: Callable[..., torch.optim.Optimizer], device_types: Collection[str]
) -> bool:
    """Whether to pass `fused=True`: Adam/AdamW, every parameter on CUDA, fused/foreach not set.

    `optimizer` is the partial from the optimizer config; an explicit `fused` (also false) or
    `foreach: true` in it is the user's choice and wins.
    """
    cls = getattr(optimizer, "func", optimizer)
    keywords = getattr(optimizer, "keywords", {})
    return (
        isinstance(cls, type)
        and issubclass(cls, FUSABLE_OPTIMIZERS)
        and set(device_types) == {"cuda"}
        and keywords.get("fused") is None
        and not keywords.get("foreach")
    )


def configure_optimizers(
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any] | None,
    parameters: Iterable[torch.nn.Parameter],
) -> Any:
    """What `LightningModule.configure_optimizers` returns: the optimizer, and the schedule
    stepped once per epoch when there is one. Call it after the parameters are on their device."""
    factory = instantiate(optimizer)
    params = list(parameters)
    fused = use_fused(factory, {p.device.type for p in params})
    built = factory(params=params, **({"fused": True} if fused else {}))
    if not scheduler:
        return built
    schedule = instantiate(scheduler)(optimizer=built)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
