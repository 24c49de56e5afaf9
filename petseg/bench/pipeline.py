"""The pipeline section: samples/s of JPEG decode + augmentations vs the decoded cache."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from petseg.bench.common import Batch
from petseg.data.oxford import PetTrimaps
from petseg.data.transforms import train_pipeline


def decode_dataset(cfg: DictConfig, base: Path, names: Sequence[str]) -> PetTrimaps:
    """The training path: JPEG/PNG decode (draft-scaled) + resize + train augmentations."""
    size = int(cfg.data.image_size)
    augment = hydra.utils.instantiate(cfg.data.train_transforms)
    return PetTrimaps(base, names, train_pipeline(size, augment), size=size)


def cached_dataset(source: PetTrimaps, size: int) -> PetTrimaps:
    """The same samples and transforms read from petseg.data.cache's decoded arrays.

    The one place the bench meets the cache's API; ImportError, AttributeError or TypeError
    (that API not there, or changed) make the bench report n/a. The cache is built once, untimed,
    beside the dataset or in the user cache (petseg.data.cache.cache_root) and reused.
    """
    from petseg.data.cache import ensure_cache

    # Label "bench": its own small cache, so it never replaces (prunes) a training run's.
    rows = ensure_cache(source.base, source.names, size, "bench")
    if rows is None:
        raise OSError("the decoded cache could not be written (see the warning above)")
    return PetTrimaps(source.base, source.names, source.transform, source.size, cache=rows)


@contextlib.contextmanager
def worker_threads() -> Iterator[None]:
    """One intra-op thread, as torch sets it in every DataLoader worker; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def samples_per_s(dataset: PetTrimaps, count: int, warmup: int = 2) -> tuple[float, list[Batch]]:
    """Samples/s of `dataset[i]` for i < count (after `warmup` untimed reads), and the samples,
    read as a DataLoader worker reads them (`worker_threads`)."""
    with worker_threads():
        for i in range(min(warmup, len(dataset))):
            dataset[i]
        start = time.perf_counter()
        samples = [dataset[i % len(dataset)] for i in range(count)]
        return count / (time.perf_counter() - start), samples


def bench_pipeline(
    cfg: DictConfig, base: Path, names: Sequence[str], count: int, cache: bool = True
) -> dict[str, Any]:
    """Decode path vs cache path, same samples; `_samples` (decode path's) feed the other parts."""
    names = list(names)[:count]
    decode = decode_dataset(cfg, base, names)
    decode_rate, samples = samples_per_s(decode, count)
    result: dict[str, Any] = {
        "samples": count,
        "decode_samples_per_s": decode_rate,
        "cache_samples_per_s": None,
        "cache_build_s": None,
        "cache": None,
    }
    if not cache:
        return {**result, "_samples": samples}
    try:
        start = time.perf_counter()
        cached = cached_dataset(decode, int(cfg.data.image_size))
        cached[0]  # opens the memory maps
        result["cache_build_s"] = time.perf_counter() - start
        result["cache_samples_per_s"], _ = samples_per_s(cached, count)
        result["cache"] = "petseg.data.cache"
    except (ImportError, AttributeError, TypeError, OSError) as e:
        result["cache"] = f"n/a: {type(e).__name__}: {e}"
    result["_samples"] = samples
    return result


def collate(samples: Sequence[Batch], batch_size: int, count: int, device: torch.device) -> list:
    """`count` batches of `batch_size` from `samples` (cycled), on `device`."""
    batches = []
    for b in range(count):
        chunk = [samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)]
        batches.append({k: torch.stack([s[k] for s in chunk]).to(device) for k in chunk[0]})
    return batches
