"""Shared pieces of the bench: the composed config, precision and autocast, device sync, data."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from petseg.data.layout import find_base
from petseg.data.oxford import read_split
from petseg.data.synthetic import ensure_synthetic
from petseg.errors import ConfigError

PETS_MINI = Path(__file__).resolve().parents[3] / "shared" / "data" / "pets-mini"
# Lightning precision -> autocast dtype (None: no autocast) for the hand-written loop.
AUTOCAST = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

Batch = dict[str, torch.Tensor]


def precision_name(value: Any) -> str:
    """Lightning's precision as a string key of AUTOCAST; others are refused with the choices."""
    name = str(value)
    if name not in AUTOCAST:
        raise ConfigError(f"precision {name}: the bench supports {', '.join(AUTOCAST)}")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What Lightning's precision plugin wraps the forward and loss in."""
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_source(
    data: str | Path | None, work: Path, count: int = 64
) -> tuple[Path, list[str], str]:
    """(dataset folder, trainval names, description): `data` if it holds the dataset, else
    ../shared/data/pets-mini, else `count` (8..64) synthetic samples generated under `work`."""
    if data != "synthetic":
        root = Path(data) if data else PETS_MINI
        base = find_base(root)
        if base is not None:
            return base, read_split(base, "trainval"), f"{root} (JPEG)"
        if data:
            raise ConfigError(
                f"--data {data}: no Oxford-IIIT Pet dataset there (images/ and "
                "annotations/trimaps/); point it at the folder holding oxford-iiit-pet/, or pass "
                "--data synthetic"
            )
    count = max(8, min(count, 64))
    base = ensure_synthetic(work / "synthetic", num_trainval=count, num_test=1, size=160, seed=0)
    return base, read_split(base, "trainval"), "synthetic 160 px (JPEG)"
