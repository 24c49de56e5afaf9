"""Reader of the official Oxford-IIIT Pet layout (data.layout): split lists, images, trimaps."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from petseg.data.layout import sample_paths, split_file, split_names, split_path
from petseg.data.transforms import resize_image, resize_labels
from petseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from petseg.data.cache import DecodedArrays

NUM_CLASSES = 3  # trimap 1 pet, 2 background, 3 border -> labels 0, 1, 2
BORDER = 2  # the border's label in load_trimap's output
# The label of ignored pixels (data.border=ignore): torch's cross-entropy default and every loss
# yaml's `ignore_index`, so loss and metrics leave them out with no setting of their own.
IGNORE_INDEX = -100
LABELS = ("trimap", "binary")  # data.labels
BORDERS = ("keep", "ignore")  # data.border

Transform = Callable[..., dict]


def read_split(base: Path, split: str) -> list[str]:
    """Image names of an official split list (`trainval` or `test`)."""
    path = split_path(base, split)
    if not path.is_file():
        raise DataError(
            f"{path}: split list not found; the official layout has {split_file(split)}"
        )
    names = split_names(path.read_text())
    if not names:
        raise DataError(f"{path}: split list is empty")
    return names


def load_image(path: Path, draft_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 (H, W, 3) and the file's full (H, W).

    With draft_size, a JPEG decodes at 1/2, 1/4 or 1/8 scale while staying >= draft_size (faster;
    the image is resized further anyway). The image only: labels never go through a draft size.
    """
    try:
        with Image.open(path) as img:
            full = (img.height, img.width)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            return np.array(img.convert("RGB")), full  # writable: torch warns on read-only
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found (named in the split list)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); remove or replace the file") from None


def trimap_raw(img: Image.Image) -> np.ndarray:
    """Raw values (H, W) of an open trimap: palette indices or grey levels as stored."""
    return np.asarray(img.convert("L") if img.mode not in ("L", "P") else img)


def load_trimap(path: Path) -> np.ndarray:
    """Trimap as labels uint8 (H, W) in {0, 1, 2}; any other raw value is an error, not a guess."""
    try:
        with Image.open(path) as img:
            raw = trimap_raw(img)
    except FileNotFoundError:
        raise DataError(f"{path}: trimap not found for this image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode trimap ({e}); remove or replace the file") from None
    bad = (raw < 1) | (raw > 3)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad]))[:5]
        raise DataError(
            f"{path}: trimap has values {values} outside {{1, 2, 3}} "
            "(1 pet, 2 background, 3 border)"
        )
    return raw - 1


def check_label_choice(labels: str, border: str) -> None:
    if labels not in LABELS:
        raise ConfigError(f"data.labels={labels} is not one of {', '.join(LABELS)}")
    if border not in BORDERS:
        raise ConfigError(f"data.border={border} is not one of {', '.join(BORDERS)}")


def class_names_of(labels: str = "trimap", border: str = "keep") -> list[str]:
    """The classes a data.labels / data.border choice trains, in label order."""
    check_label_choice(labels, border)
    border_class = (labels, border) == ("trimap", "keep")
    return ["pet", "background", "border"] if border_class else ["pet", "background"]


def label_table(labels: str = "trimap", border: str = "keep") -> torch.Tensor | None:
    """Lookup table int64 (256,) from load_trimap's labels to the training labels; None: as is.

    trimap/keep: 0 pet, 1 background, 2 border. binary: the border counts as pet (0), as in
    segmentation_models.pytorch's Oxford-IIIT Pet example. border=ignore: the border is
    IGNORE_INDEX under either. Values above 2 (a transform's mask fill) pass through unchanged.
    """
    check_label_choice(labels, border)
    if (labels, border) == ("trimap", "keep"):
        return None
    table = torch.arange(256)
    table[BORDER] = IGNORE_INDEX if border == "ignore" else 0
    return table


def load_pair(
    image_path: Path, trimap_path: Path, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Image RGB uint8 (S, S, 3) and labels uint8 (S, S) at `size`, or both at full size.

    The image is draft-decoded, then resized by the pipeline's own resize (area/linear); the
    labels go from full resolution to S in one nearest resize, so no label is resampled twice.
    """
    mask = load_trimap(trimap_path)
    image, full = load_image(image_path, size)
    if full != mask.shape:
        raise DataError(
            f"{image_path}: image is {full[1]}x{full[0]} but its trimap {trimap_path.name} "
            f"is {mask.shape[1]}x{mask.shape[0]}"
        )
    if size is None:
        return image, mask
    return resize_image(image, size), resize_labels(mask, size)


class PetTrimaps(Dataset):
    """(image, mask) pairs of one list of names; `transform` is an albumentations pipeline.

    Files are read at size x size (load_pair's `size`; None: full size). With `cache`
    (rows of petseg.data.cache's decoded arrays, one per name, built by load_pair too) samples
    come from those arrays instead of the JPEG/PNG files. `labels` / `border` (data.labels,
    data.border) map the trimap's labels after the transforms (label_table), so the files, the
    decoded cache and the augmentations stay those of the trimap whatever the choice.
    """

    def __init__(
        self,
        base: Path,
        names: Sequence[str],
        transform: Transform,
        size: int | None = None,
        cache: DecodedArrays | None = None,
        labels: str = "trimap",
        border: str = "keep",
    ) -> None:
        self.base = Path(base)
        self.table = label_table(labels, border)
        self.names = list(names)
        self.transform = transform
        self.size = size
        if cache is not None and cache.names != self.names:
            raise ValueError("cache rows must be the dataset's names, in the same order")
        self.cache = cache
        self._transform_seed: int | None = None

    def __len__(self) -> int:
        return len(self.names)

    def to_labels(self, trimap: torch.Tensor) -> torch.Tensor:
        """load_trimap's labels (int64, any shape) as this dataset's training labels."""
        return trimap if self.table is None else self.table[trimap]

    def paths(self, index: int) -> tuple[Path, Path]:
        return sample_paths(self.base, self.names[index])

    def seed_transform(self) -> None:
        """Seed albumentations' own RNG from torch's seed for this process.

        albumentations ignores global seeds, and forked DataLoader workers would all copy one RNG
        state (same augmentations in every worker). torch.initial_seed() differs per worker and
        epoch and follows `seed=`, so runs repeat and workers differ.
        """
        seed = torch.initial_seed() % 2**32
        if seed != self._transform_seed and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
            self._transform_seed = seed

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`dataset[i]`, or `dataset[(i, seed)]` from EpochSampler: augment with that seed."""
        if isinstance(key, tuple):
            index, seed = key
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
                self._transform_seed = None
        else:
            index = key
            self.seed_transform()
        if self.cache is not None:
            image, mask = self.cache.read(index)  # load_pair's output, stored once
        else:
            image, mask = load_pair(*self.paths(index), self.size)
        out = self.transform(image=image, mask=mask)
        image_t = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        return {
            "image": image_t.float().div_(255.0),  # (3, H, W) in [0, 1]
            "mask": self.to_labels(torch.from_numpy(np.ascontiguousarray(out["mask"])).long()),
        }


class SubstituteBad(Dataset):
    """A PetTrimaps whose sample that fails to load is replaced by the next one, with a warning.

    The DataModule's loaders use it: setup's check already dropped the bad files, so this only
    catches a file that went bad after setup, and one such file costs a warning, not the epoch.
    Indexing the PetTrimaps itself still raises.
    """

    def __init__(self, dataset: PetTrimaps, max_tries: int = 10) -> None:
        self.dataset = dataset
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, ...]) -> dict[str, torch.Tensor]:
        # A sampler may pass (index, augmentation seed): substitute the index, keep the rest.
        first, *rest = index if isinstance(index, tuple) else (index,)
        tries = min(self.max_tries, len(self.dataset))
        for step in range(tries):
            other = (first + step) % len(self.dataset)
            try:
                return self.dataset[(other, *rest) if rest else other]
            except DataError as e:
                error = e
                warnings.warn(
                    f"{e}; loading the next sample in its place (it changed after setup's check: "
                    "run `python -m petseg.data.check`)",
                    stacklevel=2,
                )
        raise DataError(f"{tries} samples in a row from index {index} fail to load; last: {error}")
