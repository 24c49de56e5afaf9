"""The decoded cache: built once, rebuilt on change or damage, items equal to the JPEG path's."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from petseg.data import cache, exclude, scanner
from petseg.data.datamodule import PetDataModule, auto_workers
from petseg.data.layout import find_base
from petseg.errors import ConfigError

# tiny_pets: synthetic_1..10 in trainval (9 train, 1 val), synthetic_11..14 in test, 48x48 each.
AUGMENT = [A.HorizontalFlip(p=0.5), A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5)]


def datamodule(root: Path, **kwargs) -> PetDataModule:
    options = {"download": False, "image_size": 32, "batch_size": 3, "num_workers": 0}
    return PetDataModule(root, cache=True, **{**options, **kwargs})


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The image paths the cache builder decodes, in call order."""
    calls: list[Path] = []
    load_pair = cache.load_pair

    def counting(image_path: Path, *args, **kwargs):
        calls.append(image_path)
        return load_pair(image_path, *args, **kwargs)

    monkeypatch.setattr(cache, "load_pair", counting)
    return calls


def folders(root: Path, label: str = "trainval") -> list[Path]:
    return sorted((find_base(root) / cache.FOLDER).glob(f"{label}-*"))


def test_built_once_then_reused(tiny_pets: Path, decodes: list[Path]) -> None:
    dm = datamodule(tiny_pets)
    dm.setup("fit")
    assert len(decodes) == 10  # train + val, one decode each
    (folder,) = folders(tiny_pets)
    assert folder.name.startswith("trainval-32px-")
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert manifest["shapes"] == {"images.npy": [10, 32, 32, 3], "masks.npy": [10, 32, 32]}
    masks = np.load(folder / cache.MASKS)
    assert masks.dtype == np.uint8 and set(np.unique(masks).tolist()) == {0, 1, 2}
    assert not list(folder.glob(".*.tmp"))

    again = datamodule(tiny_pets)
    again.setup("fit")
    assert len(decodes) == 10  # nothing decoded
    assert again.train_set.cache.folder == folder
    again.setup("test")
    assert len(decodes) == 14 and len(folders(tiny_pets, "test")) == 1
    batch = next(iter(again.train_dataloader()))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 32, 32) and batch["mask"].dtype == torch.int64


@pytest.mark.parametrize("change", ["rewrite", "touch"])
def test_rebuilt_when_a_file_changes(tiny_pets: Path, decodes: list[Path], change: str) -> None:
    dm = datamodule(tiny_pets)
    dm.setup("fit")
    (old,) = folders(tiny_pets)
    name = dm.train_set.names[0]
    image = find_base(tiny_pets) / "images" / f"{name}.jpg"
    if change == "rewrite":
        Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(image, quality=95)
    else:
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = datamodule(tiny_pets)
    again.setup("fit")
    assert len(decodes) == 20  # a new key: decoded again
    (new,) = folders(tiny_pets)  # the superseded cache is gone
    assert new != old
    if change == "rewrite":
        assert (again.train_set[0]["image"] - 200 / 255).abs().max() < 3 / 255


@pytest.mark.parametrize("damage", ["truncate", "no-manifest", "torn-manifest", "wrong-shape"])
def test_damaged_cache_is_rebuilt_not_read(
    tiny_pets: Path, decodes: list[Path], damage: str
) -> None:
    dm = datamodule(tiny_pets)
    dm.setup("fit")
    expected = [dm.train_set[i] for i in range(len(dm.train_set))]
    (folder,) = folders(tiny_pets)
    if damage == "truncate":
        data = (folder / cache.IMAGES).read_bytes()
        (folder / cache.IMAGES).write_bytes(data[: len(data) // 2])
    elif damage == "no-manifest":
        (folder / cache.MANIFEST).unlink()
    elif damage == "torn-manifest":
        (folder / cache.MANIFEST).write_text('{"version": 1, "key": "')
    else:  # whole files of the right byte size, but not this cache's shape
        np.save(folder / cache.MASKS, np.zeros((5, 64, 32), np.uint8))
    again = datamodule(tiny_pets)
    again.setup("fit")
    assert len(decodes) == 20  # rebuilt
    assert folders(tiny_pets) == [folder]  # same key, same place, now whole
    for i, item in enumerate(expected):
        assert torch.equal(again.train_set[i]["image"], item["image"])
        assert torch.equal(again.train_set[i]["mask"], item["mask"])


def test_bytes_changed_in_place_are_caught_and_rebuilt(
    tiny_pets: Path, decodes: list[Path]
) -> None:
    """Same size, same shapes: only the manifest's checksums tell, once per setup."""
    dm = datamodule(tiny_pets)
    dm.setup("fit")
    expected = {name: dm.train_set[i]["mask"] for i, name in enumerate(dm.train_set.names)}
    (folder,) = folders(tiny_pets)
    masks = np.load(folder / cache.MASKS, mmap_mode="r")
    offset = masks.offset + masks.size - 1  # the last label of the last row (a train sample)
    assert sorted(expected)[-1] == json.loads((folder / cache.MANIFEST).read_text())["names"][-1]
    with open(folder / cache.MASKS, "r+b") as f:
        f.seek(offset)
        f.write(bytes([7]))  # not a label
    again = datamodule(tiny_pets)
    with pytest.warns(UserWarning) as record:
        again.setup("fit")
    messages = [str(w.message) for w in record]
    assert messages == [
        f"{folder}: decoded cache changed on disk (masks.npy checksum differs from its "
        "manifest); rebuilding it"
    ]
    assert len(decodes) == 20 and folders(tiny_pets) == [folder]  # rebuilt in place
    for i, name in enumerate(again.train_set.names):
        assert torch.equal(again.train_set[i]["mask"], expected[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datamodule(tiny_pets).setup("fit")  # whole again: no warning, nothing decoded
    assert len(decodes) == 20


@pytest.mark.parametrize("augment", [False, True])
def test_items_equal_the_jpeg_path(tiny_pets: Path, augment: bool) -> None:
    """cache_size = image_size (default): identical inputs, so identical items for every seed."""
    transforms = AUGMENT if augment else []
    jpeg = PetDataModule(tiny_pets, download=False, image_size=32, train_transforms=transforms)
    cached = datamodule(tiny_pets, train_transforms=transforms)
    for dm in (jpeg, cached):
        dm.setup()
    assert jpeg.train_set.cache is None and cached.train_set.cache is not None
    for split in ("train_set", "val_set", "test_set"):
        a, b = getattr(jpeg, split), getattr(cached, split)
        assert a.names == b.names
        for i in range(len(a)):
            x, y = a[(i, 7 + i)], b[(i, 7 + i)]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])


def test_larger_cache_size_stays_close_to_the_jpeg_path(tiny_pets: Path) -> None:
    jpeg = PetDataModule(tiny_pets, download=False, image_size=32)
    cached = datamodule(tiny_pets, cache_size=40)
    for dm in (jpeg, cached):
        dm.setup("fit")
    assert folders(tiny_pets)[0].name.startswith("trainval-40px-")
    for i in range(len(jpeg.train_set)):
        x, y = jpeg.train_set[i], cached.train_set[i]
        assert y["image"].shape == (3, 32, 32) and y["mask"].shape == (32, 32)
        assert (x["image"] - y["image"]).abs().mean() < 3 / 255
        assert (x["mask"] == y["mask"]).float().mean() > 0.9  # two nearest steps vs one
        assert set(y["mask"].unique().tolist()) <= {0, 1, 2}


def test_seeded_items_repeat_and_seeds_differ(tiny_pets: Path) -> None:
    dm = datamodule(tiny_pets, train_transforms=[A.HorizontalFlip(p=0.5), A.ColorJitter(p=1.0)])
    dm.setup("fit")
    ds = dm.train_set
    first = [ds[(i, 100 + i)]["image"] for i in range(len(ds))]
    torch.rand(10)  # global RNG use in between must not matter
    assert all(torch.equal(a, ds[(i, 100 + i)]["image"]) for i, a in enumerate(first))
    assert not all(torch.equal(a, ds[(i, 200 + i)]["image"]) for i, a in enumerate(first))


def test_one_worker_loads_the_same_batches(tiny_pets: Path) -> None:
    batches = {}
    for workers in (0, 1):
        dm = datamodule(tiny_pets, num_workers=workers, train_transforms=AUGMENT)
        dm.setup("fit")
        torch.manual_seed(5)
        batches[workers] = list(dm.train_dataloader())
    assert len(batches[0]) == 3
    for a, b in zip(batches[0], batches[1], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # A spawned worker gets the file names, not a copy of the arrays.
    dm.train_set[0]
    assert dm.train_set.cache._arrays is not None
    assert len(pickle.dumps(dm.train_set)) < 20_000


def test_exclude_list_and_skip_bad_are_honoured(tiny_pets: Path, decodes: list[Path]) -> None:
    base = find_base(tiny_pets)
    exclude.write_exclude(base, ["synthetic_2"])
    data = (base / "images" / "synthetic_5.jpg").read_bytes()
    (base / "images" / "synthetic_5.jpg").write_bytes(data[: len(data) // 2])  # truncated
    dm = datamodule(tiny_pets, skip_bad=True)
    with pytest.warns(UserWarning, match="skip_bad=true: skipping 1 bad file"):
        dm.setup("fit")
    names = dm.train_set.names + dm.val_set.names
    assert len(names) == 8 and not {"synthetic_2", "synthetic_5"} & set(names)
    assert sorted(p.stem for p in decodes) == sorted(names)  # neither was decoded
    manifest = json.loads((folders(tiny_pets)[0] / cache.MANIFEST).read_text())
    assert manifest["names"] == sorted(names)
    assert len(list(dm.train_dataloader())) == 2  # 7 train samples, batch 3, drop_last


def test_read_only_dataset_caches_in_the_user_cache(
    tiny_pets: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = find_base(tiny_pets)
    scanner.scan(base, [f"synthetic_{i}" for i in range(1, 11)])  # the check cache, while writable
    base.chmod(0o555)
    try:
        dm = datamodule(tiny_pets)
        dm.setup("fit")
        assert dm.train_set[0]["image"].shape == (3, 32, 32)
    finally:
        base.chmod(0o755)
    assert not (base / cache.FOLDER).exists()
    (root,) = (tmp_path / "xdg" / "petseg").glob("decoded-*")
    assert dm.train_set.cache.folder.parent == root


def test_unwritable_cache_falls_back_to_the_jpegs(
    tiny_pets: Path, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "xdg").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = find_base(tiny_pets)
    scanner.scan(base, [f"synthetic_{i}" for i in range(1, 11)])
    base.chmod(0o555)
    try:
        dm = datamodule(tiny_pets)
        with pytest.warns(UserWarning, match=r"cannot write the decoded cache.*data\.cache=false"):
            dm.setup("fit")
        assert dm.train_set.cache is None
        assert dm.train_set[0]["image"].shape == (3, 32, 32)
    finally:
        base.chmod(0o755)


def test_config_defaults_and_errors(cfg_factory, tiny_pets: Path) -> None:
    cfg = cfg_factory("data.num_workers=auto", f"data.root={tiny_pets}", "data.download=false")
    dm = instantiate(cfg.data)
    assert dm.cache is True and dm.cache_size == 64 and dm.num_workers == auto_workers()
    assert 0 <= auto_workers() <= 8 and auto_workers() < max(2, len(os.sched_getaffinity(0)))
    with pytest.raises(ConfigError, match=r"data\.num_workers must be an int >= 0 or auto"):
        datamodule(tiny_pets, num_workers="many")
    with pytest.raises(ConfigError, match=r"data\.cache_size=24 is below data\.image_size=32"):
        datamodule(tiny_pets, cache_size=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup("fit")
    assert dm.train_set.cache is not None


@pytest.mark.realdata
def test_real_subset_through_the_cache(pets_mini: Path, tmp_path: Path, monkeypatch) -> None:
    # A read-only copy: the cache goes to XDG_CACHE_HOME whether or not ../shared is writable.
    root = tmp_path / "pets"
    base = shutil.copytree(pets_mini / "oxford-iiit-pet", root / "oxford-iiit-pet")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base.chmod(0o555)
    try:
        dm = datamodule(root, image_size=64, batch_size=16, train_transforms=AUGMENT)
        dm.setup("fit")
    finally:
        base.chmod(0o755)
    assert not (base / cache.FOLDER).exists()
    assert dm.train_set.cache.folder.parents[1] == tmp_path / "xdg" / "petseg"
    assert (len(dm.train_set), len(dm.val_set)) == (339, 38)
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 64, 64) and batch["mask"].shape[1:] == (64, 64)
        assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
        seen += len(batch["image"])
    assert seen == 339 - 339 % 16
    # Exact on real JPEGs too: the val items equal the JPEG path's.
    jpeg = PetDataModule(root, download=False, image_size=64)
    jpeg.setup("fit")
    for i in range(len(jpeg.val_set)):
        assert torch.equal(jpeg.val_set[i]["image"], dm.val_set[i]["image"])
        assert torch.equal(jpeg.val_set[i]["mask"], dm.val_set[i]["mask"])
