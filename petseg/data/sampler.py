"""A sampler whose epoch e is the same in an uninterrupted run and in one resumed at epoch e.

torch's RandomSampler draws from the global RNG, whose state a checkpoint does not hold, so a
resumed run would see other batches and other augmentations than the run it continues. Here the
order is a function of (seed, epoch) and each sample carries its own augmentation seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, different per (seed, epoch, index)."""
    return hash((seed, epoch, index)) % 2**32  # ints hash deterministically (no PYTHONHASHSEED)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, augmentation seed)`; Lightning calls `set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        for index in order:
            yield index, sample_seed(self.seed, self.epoch, index)
