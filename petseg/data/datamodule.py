"""LightningDataModule over Oxford-IIIT Pet trimaps (or the synthetic set in the same layout)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader

from petseg.data.cache import DecodedArrays, ensure_cache
from petseg.data.exclude import check_split_overlap, usable_names
from petseg.data.gpu_augment import FlipJitter, split_transforms
from petseg.data.layout import BASE_FOLDER, find_base, no_dataset, sample_paths
from petseg.data.oxford import (
    PetTrimaps,
    SubstituteBad,
    class_names_of,
    label_table,
    load_trimap,
    read_split,
)
from petseg.data.sampler import EpochSampler, sample_seed
from petseg.data.synthetic import ensure_synthetic
from petseg.data.transforms import IMAGE_INTERPOLATIONS, eval_pipeline, train_pipeline
from petseg.errors import ConfigError, DataError

MAX_AUTO_WORKERS = 8
PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
# data.gpu_augment's stages (all but training only with eval_augment), numbered for their seeds.
AUGMENTED_STAGES = {
    RunningStage.TRAINING: 0,
    RunningStage.SANITY_CHECKING: 1,
    RunningStage.VALIDATING: 2,
    RunningStage.TESTING: 3,
}


def auto_workers() -> int:
    """`data.num_workers=auto`: the CPUs this process may use less one for the training loop, <= 8.

    On 2 CPUs that is 1 worker; on 1 CPU, 0 (load in the training process). More than 8 workers
    rarely pays once samples come from the decoded cache.
    """
    try:
        cpus = len(os.sched_getaffinity(0))  # honours taskset / SLURM's cpus_per_task
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_AUTO_WORKERS))


def worker_context(num_workers: int) -> str | None:
    """The DataLoader workers' start method: the platform's, also inside a joblib (loky) worker
    (hydra/launcher=gpu_pool), whose default `loky` method DataLoader workers cannot start with."""
    if num_workers == 0 or mp.get_start_method(allow_none=True) != "loky":
        return None
    return "fork" if sys.platform == "linux" else "spawn"


class PetDataModule(L.LightningDataModule):
    """Train/val from a seeded split of `trainval`, test from the official `test` list.

    val_fraction=0 (the article's protocol): train on all of trainval, val is the test list
    (through eval_augment's pipeline when set), so val scores are test scores. labels / border
    choose the classes: trimap, binary (pet with its border vs background) or border=ignore (border
    pixels labelled IGNORE_INDEX); num_classes must match (the yaml derives it).
    """

    def __init__(
        self,
        root: str | Path = "data",
        download: bool = True,
        image_size: int = 128,
        batch_size: int = 16,
        num_workers: int | str = 2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_classes: int = 3,
        pin_memory: bool = True,
        train_transforms: Sequence[A.BasicTransform] = (),
        synthetic: dict[str, Any] | None = None,
        eval_augment: bool = False,
        skip_bad: bool = False,
        cache: bool = False,
        cache_size: int | None = None,
        gpu_augment: bool = False,
        image_interpolation: str = "area",
        eval_batch_size: int | None = None,
        eval_shuffle: bool = False,
        drop_last: bool = True,
        labels: str = "trimap",
        border: str = "keep",
    ) -> None:
        super().__init__()
        classes = class_names_of(labels, border)
        if num_classes != len(classes):
            raise ConfigError(
                f"data.num_classes={num_classes} but data.labels={labels} data.border={border} "
                f"trains {len(classes)} classes ({', '.join(classes)}): drop the data.num_classes "
                "override (it follows data.labels and data.border)"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(
                f"data.val_fraction must be in (0, 1), got {val_fraction}; or 0 for no "
                "validation split (val is then the test split, the article's protocol)"
            )
        if image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ConfigError(
                f"data.image_interpolation must be one of {IMAGE_INTERPOLATIONS}, "
                f"got {image_interpolation!r}"
            )
        if image_interpolation == "nearest" and cache:
            raise ConfigError(
                "data.image_interpolation=nearest resizes each full-size image in the pipeline, "
                "which the decoded cache (area-resized) cannot hold; set data.cache=false"
            )
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size must be >= 1 or null, got {eval_batch_size}")
        if image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {image_size}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers == "auto":
            num_workers = auto_workers()
        elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers must be an int >= 0 or auto, got {num_workers!r}")
        if cache_size is not None and cache_size < image_size:
            raise ConfigError(
                f"data.cache_size={cache_size} is below data.image_size={image_size}: the cache "
                "would drop detail the model sees; set it >= image_size, or null (= image_size)"
            )
        self.root = Path(root)
        self.download = download
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_classes = num_classes
        self.pin_memory = pin_memory
        self.train_transforms = list(train_transforms)
        self.synthetic = dict(synthetic) if synthetic else None
        # val/test through the training augmentations too: the article's evaluation protocol.
        self.eval_augment = eval_augment
        # Samples with files training cannot read: skipped with a warning, else setup stops.
        self.skip_bad = skip_bad
        # Decode and resize once into memory-mapped arrays (petseg.data.cache), read every epoch.
        self.cache = cache
        self.cache_size = cache_size or image_size  # = image_size: items equal the JPEG path's
        # "nearest": files read at full size, the pipeline resizes (the article's Resize NEAREST).
        self.image_interpolation = image_interpolation
        # val/test loaders: batch size (null: batch_size) and order (the article: 21, shuffled).
        self.eval_batch_size = eval_batch_size or batch_size
        self.eval_shuffle = eval_shuffle
        # Drop the last, partial training batch (the article's DataLoader kept it).
        self.drop_last = drop_last
        # Trimap labels -> training labels, applied after the transforms (PetTrimaps.to_labels).
        self.labels = labels
        self.border = border
        self.class_names = classes  # what a checkpoint to evaluate on this data must predict
        # HorizontalFlip and ColorJitter move from the workers to the batch on the device.
        self.device_augment: FlipJitter | None = None
        if gpu_augment:
            self.train_transforms, self.device_augment = split_transforms(self.train_transforms)
        self._augment_seed = 0
        self._generator: tuple[tuple, torch.Generator] | None = None
        self.train_set: PetTrimaps | None = None
        self.val_set: PetTrimaps | None = None
        self.test_set: PetTrimaps | None = None

    def prepare_data(self) -> None:
        """Runs once per node: make the synthetic set, or download the real one when allowed."""
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)
        elif find_base(self.root) is None and self.download:
            from torchvision.datasets import OxfordIIITPet

            try:
                OxfordIIITPet(str(self.root), target_types="segmentation", download=True)
            except (OSError, RuntimeError) as e:  # URLError, timeouts, disk; a bad md5
                reason = " ".join(str(getattr(e, "reason", None) or e).split())  # one line
                raise DataError(
                    f"data.download=true: downloading Oxford-IIIT Pet into {self.root} failed "
                    f"({reason}); get images.tar.gz and annotations.tar.gz from {PETS_URL}, "
                    f"extract them into <folder>/{BASE_FOLDER}/ and point data.root at the "
                    f"folder holding {BASE_FOLDER}/ (or set data.download=false)"
                ) from None

    def check_source(self) -> None:
        """Fail before any model is built when the data can be neither found nor made."""
        if not self.synthetic and not self.download:
            self.base()

    def base(self) -> Path:
        base = find_base(self.root)
        if base is None:
            hint = (
                "set data.download=true to fetch it"
                if not self.download
                else "the download did not produce it; check network access"
            )
            raise DataError(
                f"{no_dataset(self.root)}; {hint}, or point data.root at the folder that holds "
                f"{BASE_FOLDER}/"
            )
        return base

    def split_names(self) -> tuple[list[str], list[str]]:
        """Seeded train/val split of trainval; the same seed gives the same split on any machine."""
        names = sorted(set(read_split(self.base(), "trainval")))
        if self.val_fraction == 0:
            return names, []
        order = np.random.default_rng(self.split_seed).permutation(len(names))
        num_val = max(1, round(len(names) * self.val_fraction))
        if num_val >= len(names):
            raise ConfigError(
                f"data.val_fraction={self.val_fraction} leaves no training images "
                f"out of {len(names)}"
            )
        val = [names[i] for i in sorted(order[:num_val])]
        train = [names[i] for i in sorted(order[num_val:])]
        return train, val

    def class_pixel_counts(self) -> torch.Tensor:
        """Pixels per class over the training split's trimaps (for `loss.weight=auto`); ignored
        pixels (data.border=ignore) count for no class."""
        self.prepare_data()
        base = self.base()
        table = label_table(self.labels, self.border)
        counts = torch.zeros(self.num_classes, dtype=torch.float64)
        for name in self.usable({"train": self.split_names()[0]})["train"]:
            labels = torch.from_numpy(load_trimap(sample_paths(base, name)[1])).long().ravel()
            labels = labels if table is None else table[labels]
            labels = labels[(labels >= 0) & (labels < self.num_classes)]
            counts += torch.bincount(labels, minlength=self.num_classes).double()
        return counts

    def usable(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        """`splits` less exclude.txt's names and broken samples (these stop setup, or skip_bad)."""
        return usable_names(self.base(), splits, self.root, self.skip_bad)

    def decoded(self, names: list[str], label: str) -> DecodedArrays | None:
        """The decoded cache of `names` (built on first use), or None without data.cache."""
        if not self.cache:
            return None
        return ensure_cache(self.base(), names, self.cache_size, label)

    def dataset(
        self, names: list[str], transform: Any, size: int | None, rows: DecodedArrays | None
    ) -> PetTrimaps:
        """A split's PetTrimaps, with this module's labels."""
        return PetTrimaps(self.base(), names, transform, size, rows, self.labels, self.border)

    def setup(self, stage: str | None = None) -> None:
        base = self.base()
        check_split_overlap(base, self.root)
        # Files are read at the model's input size (JPEGs draft-decoded, labels resized once).
        interpolation = self.image_interpolation
        size = None if interpolation == "nearest" else self.image_size
        augment = train_pipeline(self.image_size, self.train_transforms, interpolation)
        evaluate = augment if self.eval_augment else eval_pipeline(self.image_size, interpolation)
        if stage in (None, "fit", "validate") and self.train_set is None and not self.val_fraction:
            train = self.usable({"train": self.split_names()[0]})["train"]
            self.train_set = self.dataset(train, augment, size, self.decoded(train, "trainval"))
            test = self.usable({"test": read_split(base, "test")})["test"]
            self.val_set = self.dataset(test, evaluate, size, self.decoded(test, "test"))
        if stage in (None, "fit", "validate") and self.train_set is None:
            train, val = self.split_names()
            usable = self.usable({"train": train, "val": val})
            # One cache for train + val: another split_seed or val_fraction reuses it.
            cached = self.decoded([*usable["train"], *usable["val"]], "trainval")
            train_rows = cached.select(usable["train"]) if cached is not None else None
            val_rows = cached.select(usable["val"]) if cached is not None else None
            self.train_set = self.dataset(usable["train"], augment, size, train_rows)
            self.val_set = self.dataset(usable["val"], evaluate, size, val_rows)
        if stage in (None, "test", "predict") and self.test_set is None and not self.val_fraction:
            self.test_set = self.val_set  # no split: val already is the test list, same pipeline
        if stage in (None, "test", "predict") and self.test_set is None:
            test = self.usable({"test": read_split(base, "test")})["test"]
            self.test_set = self.dataset(test, evaluate, size, self.decoded(test, "test"))

    def _loader(self, dataset: PetTrimaps | None, shuffle: bool, train: bool = True) -> DataLoader:
        assert dataset is not None, "call setup() first"
        # torch.initial_seed() is `seed=` (seed_everything ran before the loaders are made).
        seed = torch.initial_seed() % 2**32
        self._augment_seed = seed
        sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle)
        return DataLoader(
            SubstituteBad(dataset),  # a file gone bad after setup's check costs a warning
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=self.drop_last and train and shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_context(self.num_workers),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """data.gpu_augment: flip and jitter training batches (eval ones too with eval_augment)."""
        trainer = self.trainer
        if self.device_augment is None or trainer is None:
            return batch
        stage = AUGMENTED_STAGES.get(trainer.state.stage)
        if stage is None or (stage > 0 and not self.eval_augment):
            return batch
        # One generator per (stage, epoch), seeded from `seed=`: epochs repeat, even after a resume
        # from an epoch-end checkpoint (a resume mid-epoch draws other augmentations).
        device = batch["image"].device
        key = (stage, trainer.current_epoch, str(device))
        if self._generator is None or self._generator[0] != key:
            seed = sample_seed(self._augment_seed, trainer.current_epoch, -1 - stage)
            self._generator = (key, torch.Generator(device=device).manual_seed(seed))
        return self.device_augment(batch, self._generator[1])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=self.eval_shuffle, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=self.eval_shuffle, train=False)
