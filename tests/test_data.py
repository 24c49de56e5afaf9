"""Reader, transforms, split and DataModule on generated and (when present) real data."""

from __future__ import annotations

import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from petseg.data.datamodule import PetDataModule
from petseg.data.layout import find_base
from petseg.data.oxford import PetTrimaps, load_image, load_trimap, read_split
from petseg.data.synthetic import ensure_synthetic
from petseg.data.transforms import eval_pipeline, train_pipeline
from petseg.errors import DataError


def test_trimap_values_map_to_labels(tmp_path: Path) -> None:
    raw = np.array([[1, 2], [3, 1]], np.uint8)
    Image.fromarray(raw, mode="L").save(tmp_path / "t.png")
    assert load_trimap(tmp_path / "t.png").tolist() == [[0, 1], [2, 0]]


def test_trimap_value_outside_range_names_file(tmp_path: Path) -> None:
    Image.fromarray(np.array([[1, 2], [4, 0]], np.uint8), mode="L").save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png.*\[0, 4\]"):
        load_trimap(tmp_path / "bad.png")


def test_masks_stay_labels_after_every_transform(cfg_factory) -> None:
    """Each configured augmentation (and the resize) keeps mask values in {0, 1, 2}."""
    cfg = cfg_factory()
    augment = instantiate(cfg.data.train_transforms)
    assert len(augment) >= 2
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (75, 101), dtype=np.uint8)
    for transform in [None, *augment]:
        pipeline = train_pipeline(64, [] if transform is None else [transform])
        for _ in range(5):
            out = pipeline(image=image, mask=mask)
            assert out["image"].shape == (64, 64, 3)
            assert out["mask"].shape == (64, 64)
            assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2}


def test_synthetic_set_is_official_layout_and_cached(tmp_path: Path) -> None:
    base = ensure_synthetic(tmp_path, num_trainval=5, num_test=3, size=32, seed=0)
    assert find_base(tmp_path) == base
    assert len(read_split(base, "trainval")) == 5 and len(read_split(base, "test")) == 3
    raw = np.asarray(Image.open(base / "annotations" / "trimaps" / "synthetic_1.png"))
    assert set(np.unique(raw).tolist()) == {1, 2, 3}
    mtime = (base / "images" / "synthetic_1.jpg").stat().st_mtime_ns
    ensure_synthetic(tmp_path, num_trainval=5, num_test=3, size=32, seed=0)
    assert (base / "images" / "synthetic_1.jpg").stat().st_mtime_ns == mtime  # reused, not remade


def test_datamodule_batches_and_seeded_split(tiny_pets: Path) -> None:
    dm = PetDataModule(tiny_pets, download=False, image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    train, val = dm.split_names()
    assert len(val) == 1 and len(train) == 9 and not set(train) & set(val)
    assert PetDataModule(tiny_pets, download=False, split_seed=0).split_names() == (train, val)
    assert PetDataModule(tiny_pets, download=False, split_seed=1).split_names() != (train, val)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.int64
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    assert len(dm.test_set) == 4


def test_missing_root_without_download_names_option(tmp_path: Path) -> None:
    dm = PetDataModule(tmp_path / "nowhere", download=False)
    dm.prepare_data()
    with pytest.raises(DataError, match=r"data\.root=.*nowhere.*data\.download=true"):
        dm.setup("fit")


def test_undecodable_image_names_file(tiny_pets: Path) -> None:
    dm = PetDataModule(tiny_pets, download=False, image_size=32, num_workers=0)
    dm.setup("fit")
    name = dm.train_set.names[0]
    (find_base(tiny_pets) / "images" / f"{name}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=rf"{name}\.jpg: cannot decode image"):
        dm.train_set[0]


def test_image_trimap_size_mismatch_names_file(tiny_pets: Path) -> None:
    base = find_base(tiny_pets)
    Image.fromarray(np.ones((20, 20), np.uint8), mode="L").save(
        base / "annotations" / "trimaps" / "synthetic_1.png"
    )
    # setup's data check stops the run before training, naming the file ...
    dm = PetDataModule(tiny_pets, download=False, image_size=32, num_workers=0)
    with pytest.raises(DataError, match=r"synthetic_1\.jpg: size-mismatch: image is 48x48"):
        dm.setup("fit")
    # ... and the reader itself refuses the pair too.
    dataset = PetTrimaps(base, ["synthetic_1"], eval_pipeline(32))
    with pytest.raises(DataError, match=r"synthetic_1\.jpg: image is 48x48 but its trimap"):
        dataset[0]


def one_nearest_resize(labels: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)


def write_layout(root: Path, trainval: list[str], test: list[str]) -> Path:
    """The split lists of an Oxford layout under root/oxford-iiit-pet; returns that folder."""
    annotations = root / "oxford-iiit-pet" / "annotations"
    (annotations / "trimaps").mkdir(parents=True, exist_ok=True)
    (root / "oxford-iiit-pet" / "images").mkdir(exist_ok=True)
    (annotations / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in trainval))
    (annotations / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in test))
    return root / "oxford-iiit-pet"


def served_masks(root: Path, size: int, cache: bool) -> dict[str, np.ndarray]:
    """Every split's labels as PetDataModule serves them (no augmentation), by name."""
    dm = PetDataModule(root, download=False, image_size=size, num_workers=0, cache=cache)
    dm.setup()
    assert (dm.train_set.cache is not None) == cache
    return {
        name: dataset[i]["mask"].numpy()
        for dataset in (dm.train_set, dm.val_set, dm.test_set)
        for i, name in enumerate(dataset.names)
    }


@pytest.mark.parametrize("cache", [False, True])
def test_labels_are_resized_once_from_full_size(tmp_path: Path, cache: bool) -> None:
    """A draft-decoded JPEG must not drag its labels through the draft size (two nearest steps)."""
    rng = np.random.default_rng(0)
    names = [f"big_{i}" for i in range(4)]
    base = write_layout(tmp_path / "pets", names[:3], names[3:])
    full = {}
    for name in names:
        raw = rng.integers(1, 4, (261, 303), dtype=np.uint8)  # per-pixel labels: every step shows
        Image.fromarray(raw, mode="L").save(base / "annotations" / "trimaps" / f"{name}.png")
        image = rng.integers(0, 256, (261, 303, 3), dtype=np.uint8)
        Image.fromarray(image).save(base / "images" / f"{name}.jpg", quality=90)
        full[name] = raw - 1
    assert load_image(base / "images" / "big_0.jpg", 64)[0].shape == (66, 76, 3)  # drafted
    served = served_masks(tmp_path / "pets", 64, cache)
    assert sorted(served) == names
    for name, mask in served.items():
        np.testing.assert_array_equal(mask, one_nearest_resize(full[name], 64))


@pytest.mark.realdata
@pytest.mark.parametrize("cache", [False, True])
def test_real_labels_are_resized_once(pets_mini: Path, tmp_path: Path, cache: bool) -> None:
    source = find_base(pets_mini)
    trainval, test = read_split(source, "trainval")[:3], read_split(source, "test")[:2]
    base = write_layout(tmp_path / "pets", trainval, test)  # a private copy: caches go there
    for name in [*trainval, *test]:
        for rel in (f"images/{name}.jpg", f"annotations/trimaps/{name}.png"):
            shutil.copy2(source / rel, base / rel)
    assert load_image(base / "images" / f"{test[0]}.jpg", 64)[0].shape[0] < 200  # drafted
    for name, mask in served_masks(tmp_path / "pets", 64, cache).items():
        labels = load_trimap(base / "annotations" / "trimaps" / f"{name}.png")
        np.testing.assert_array_equal(mask, one_nearest_resize(labels, 64))


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
            "([Errno -3] Temporary failure in name resolution)",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "([Errno 104] Connection reset by peer)",
        ),
    ],
)
def test_download_without_network_is_one_line(
    tmp_path: Path, monkeypatch, error: OSError, reason: str
) -> None:
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's download calls
    dm = PetDataModule(tmp_path / "data", download=True)
    with pytest.raises(DataError) as raised:
        dm.prepare_data()
    message = str(raised.value)
    assert calls and "\n" not in message and raised.value.__cause__ is None
    assert message.startswith(f"data.download=true: downloading Oxford-IIIT Pet into {tmp_path}")
    assert reason in message and "https://www.robots.ox.ac.uk/~vgg/data/pets/" in message
    assert "data.download=false" in message
    assert "point data.root at the folder holding oxford-iiit-pet/" in message


@pytest.mark.realdata
def test_real_subset_loads(pets_mini: Path, tmp_path: Path, monkeypatch) -> None:
    # A copy (read-only if the source is) and the user cache in tmp_path: setup's scan cache
    # goes to neither ../shared nor ~/.cache, whether or not ../shared is writable.
    root = tmp_path / "pets"
    shutil.copytree(pets_mini / "oxford-iiit-pet", root / "oxford-iiit-pet")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = PetDataModule(root, download=False, image_size=64, batch_size=8, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (339, 38, 219)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64)
    assert set(batch["mask"].unique().tolist()) == {0, 1, 2}
    # The reduced-scale JPEG decode keeps image and mask aligned: pets are mostly class 0 inside.
    counts = torch.bincount(batch["mask"].flatten(), minlength=3)
    assert counts[1] > counts[2] and counts[0] > counts[2]


@pytest.mark.parametrize(
    ("labels", "border", "expected"),
    [
        ("trimap", "keep", lambda pet, bg, border: [pet, bg, border]),
        ("binary", "keep", lambda pet, bg, border: [pet + border, bg]),  # border counts as pet
        ("trimap", "ignore", lambda pet, bg, border: [pet, bg]),  # border counts for no class
        ("binary", "ignore", lambda pet, bg, border: [pet, bg]),
    ],
)
def test_class_pixel_counts_follow_the_labels(tiny_pets: Path, labels, border, expected) -> None:
    """loss.weight=auto's counts: per training class of data.labels / data.border."""
    trimap = PetDataModule(tiny_pets, download=False).class_pixel_counts()
    num_classes = 3 if (labels, border) == ("trimap", "keep") else 2
    dm = PetDataModule(tiny_pets, False, num_classes=num_classes, labels=labels, border=border)
    assert dm.class_pixel_counts().tolist() == expected(*trimap.tolist())


def test_epoch_sampler_order_and_augmentation_depend_on_seed_and_epoch_only(tiny_pets: Path):
    """What a resumed run needs: epoch e's batches equal the uninterrupted run's epoch e."""
    from petseg.data.sampler import EpochSampler

    def epoch_batches(seed: int, epoch: int) -> list[torch.Tensor]:
        import albumentations as A

        dm = PetDataModule(
            tiny_pets,
            download=False,
            image_size=32,
            batch_size=3,
            num_workers=0,
            train_transforms=[A.HorizontalFlip(p=0.5), A.ColorJitter(p=1.0)],
        )
        dm.setup("fit")
        torch.manual_seed(seed)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, EpochSampler)
        loader.sampler.set_epoch(epoch)
        torch.rand(100)  # global RNG use in between must not matter
        return [b["image"] for b in loader]

    first = epoch_batches(seed=3, epoch=1)
    again = epoch_batches(seed=3, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other_epoch = epoch_batches(seed=3, epoch=2)
    assert not all(torch.equal(a, b) for a, b in zip(first, other_epoch, strict=True))
