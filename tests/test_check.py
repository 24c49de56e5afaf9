"""The data check (report, exit codes, exclude list, cache) and how the DataModule applies it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.data import check, exclude, faults, scanner
from petseg.data.datamodule import PetDataModule
from petseg.data.layout import find_base
from petseg.data.oxford import load_image, read_split
from petseg.errors import DataError

# tiny_pets: synthetic_1..10 in trainval, synthetic_11..14 in test, 48x48 each.
HANDLED = {
    ("images/synthetic_1.jpg", "format-mismatch"),  # a PNG named .jpg
    ("images/synthetic_2.jpg", "format-mismatch"),  # an RGBA PNG named .jpg
    ("images/synthetic_2.jpg", "mode"),
    ("images/synthetic_3.jpg", "format-mismatch"),  # a GIF named .jpg
    ("images/synthetic_3.jpg", "mode"),
    ("images/synthetic_4.jpg", "mode"),  # a grayscale JPEG
}
BREAKING_TRAINVAL = {
    ("images/synthetic_5.jpg", "truncated"),
    ("annotations/trimaps/synthetic_6.png", "trimap-values"),
    ("images/synthetic_7.jpg", "size-mismatch"),
    ("annotations/trimaps/synthetic_8.png", "missing-trimap"),
    ("images/ghost_1.jpg", "missing-image"),
}
BREAKING_TEST = {("images/synthetic_12.jpg", "unreadable")}
BAD_NAMES = {"synthetic_5", "synthetic_6", "synthetic_7", "synthetic_8", "ghost_1", "synthetic_12"}
GOOD_TRAINVAL = {f"synthetic_{i}" for i in (1, 2, 3, 4, 9, 10)}


def pixels(seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48, channels), dtype=np.uint8)


@pytest.fixture
def bad_pets(tiny_pets: Path) -> Path:
    """tiny_pets with one file per fault of the issue; returns data.root."""
    base = find_base(tiny_pets)
    images, trimaps = base / "images", base / "annotations" / "trimaps"
    Image.fromarray(pixels(1)).save(images / "synthetic_1.jpg", format="PNG")
    Image.fromarray(pixels(2, 4), mode="RGBA").save(images / "synthetic_2.jpg", format="PNG")
    Image.fromarray(pixels(3)).quantize(16).save(images / "synthetic_3.jpg", format="GIF")
    Image.fromarray(pixels(4)[..., 0], mode="L").save(images / "synthetic_4.jpg", quality=95)
    data = (images / "synthetic_5.jpg").read_bytes()
    (images / "synthetic_5.jpg").write_bytes(data[: len(data) // 2])
    raw = np.asarray(Image.open(trimaps / "synthetic_6.png")).copy()
    raw[0, :5] = 7
    Image.fromarray(raw, mode="L").save(trimaps / "synthetic_6.png")
    Image.fromarray(np.full((20, 30), 2, np.uint8), mode="L").save(trimaps / "synthetic_7.png")
    (trimaps / "synthetic_8.png").unlink()
    (trimaps / "ghost_1.png").write_bytes((trimaps / "synthetic_9.png").read_bytes())
    with (base / "annotations" / "trainval.txt").open("a") as f:
        f.write("ghost_1 1 1 1\n")
    (images / "synthetic_12.jpg").write_bytes(b"not an image at all")
    return tiny_pets


def found(report: faults.Report) -> set[tuple[str, str]]:
    return {(f.path, f.kind) for f in report.faults}


def test_report_names_each_file_and_its_fault(bad_pets: Path, capsys) -> None:
    base = find_base(bad_pets)
    report = scanner.scan(base, [*read_split(base, "trainval"), *read_split(base, "test")])
    assert found(report) == HANDLED | BREAKING_TRAINVAL | BREAKING_TEST
    assert set(report.bad_names()) == BAD_NAMES
    assert not any(f.breaking for f in report.faults if (f.path, f.kind) in HANDLED)

    assert check.main([f"data.root={bad_pets}"]) == 1
    out = capsys.readouterr().out
    breaking, handled = out.split("Handled by the reader")
    for path, kind in BREAKING_TRAINVAL | BREAKING_TEST:
        assert f"{path}: {kind}: " in breaking
    for path, kind in HANDLED:
        assert f"{path}: {kind}: " in handled
    assert "values [7] outside {1, 2, 3}" in out
    assert "image is 48x48 but its trimap synthetic_7.png is 30x20" in out
    assert "PNG data in a .jpg file" in out and "GIF data in a .jpg file" in out
    assert "RGBA; the reader converts it to RGB" in out
    assert "(exit 1)" in out


def test_write_exclude_lists_only_breaking_samples(bad_pets: Path, capsys) -> None:
    base = find_base(bad_pets)
    assert check.main([f"data.root={bad_pets}", "--write-exclude", "--workers", "2"]) == 0
    text = (base / "annotations" / "exclude.txt").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    names = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert "petseg.data.check --write-exclude" in header[0]
    assert sorted(names) == sorted(BAD_NAMES)
    assert exclude.read_exclude(base) == BAD_NAMES
    capsys.readouterr()
    assert check.main([f"data.root={bad_pets}"]) == 0  # all excluded: setup would not stop
    out = capsys.readouterr().out
    assert "images/synthetic_5.jpg: truncated: " in out and "[excluded]" in out


def test_exit_codes_clean_and_no_dataset(tiny_pets: Path, tmp_path: Path, capsys) -> None:
    assert check.main([f"data.root={tiny_pets}"]) == 0
    assert check.main([f"data.root={find_base(tiny_pets)}"]) == 0  # the folder itself works too
    capsys.readouterr()
    assert check.main([f"data.root={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Oxford-IIIT Pet dataset there" in err
    with pytest.raises(SystemExit) as exit_info:
        check.main(["data.rot=x"])
    assert exit_info.value.code == 2


def test_cli_subprocess_exits_1_on_bad_files(bad_pets: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.data.check", f"data.root={bad_pets}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "images/synthetic_5.jpg: truncated: " in proc.stdout


def test_setup_fails_fast_naming_the_files(bad_pets: Path) -> None:
    dm = PetDataModule(bad_pets, download=False, image_size=32, num_workers=0)
    with pytest.raises(DataError) as error:
        dm.setup("fit")
    first, *rest = str(error.value).splitlines()
    assert dm.split_names()[1] == ["synthetic_3"]  # val: seed 0 picks a readable one
    assert first == (
        f"5 bad files in the train split of data.root={bad_pets}: run "
        f"`python -m petseg.data.check data.root={bad_pets}` or set data.skip_bad=true"
    )
    assert {tuple(line.strip().split(": ")[:2]) for line in rest} == BREAKING_TRAINVAL
    with pytest.raises(DataError, match=r"^1 bad file in the test split"):
        dm.setup("test")


def test_skip_bad_drops_them_with_one_warning_and_loads(bad_pets: Path) -> None:
    dm = PetDataModule(
        bad_pets, download=False, image_size=32, batch_size=2, num_workers=0, skip_bad=True
    )
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
    messages = [str(w.message) for w in record if "skip_bad" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("data.skip_bad=true: skipping 5 bad files")
    assert all(path in messages[0] for path, _ in BREAKING_TRAINVAL)
    assert set(dm.train_set.names) | set(dm.val_set.names) == GOOD_TRAINVAL
    batches = list(dm.train_dataloader())  # handled files (PNG, RGBA, GIF, gray) load as RGB
    assert sum(len(b["image"]) for b in batches) == len(dm.train_set) - len(dm.train_set) % 2
    for batch in [*batches, *dm.val_dataloader()]:
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["mask"].shape[1:] == (32, 32)
    with pytest.warns(UserWarning, match="1 bad file in the test split"):
        dm.setup("test")
    assert "synthetic_12" not in dm.test_set.names and len(dm.test_set) == 3


def test_exclude_list_is_honoured_and_keeps_the_split(bad_pets: Path) -> None:
    base = find_base(bad_pets)
    exclude.write_exclude(base, sorted(BAD_NAMES))
    dm = PetDataModule(bad_pets, download=False, image_size=32, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup()
    train, val = dm.split_names()  # the seeded split of the full list, less the excluded names
    assert dm.train_set.names == [n for n in train if n not in BAD_NAMES]
    assert dm.val_set.names == [n for n in val if n not in BAD_NAMES]
    assert len(dm.test_set) == 3


def test_converted_files_load_as_rgb_with_their_pixels(bad_pets: Path) -> None:
    images = find_base(bad_pets) / "images"
    png, _ = load_image(images / "synthetic_1.jpg")
    rgba, _ = load_image(images / "synthetic_2.jpg")
    gif, _ = load_image(images / "synthetic_3.jpg")
    gray, _ = load_image(images / "synthetic_4.jpg")
    for image in (png, rgba, gif, gray):
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(png, pixels(1))
    np.testing.assert_array_equal(rgba, pixels(2, 4)[..., :3])  # alpha dropped, RGB as stored
    palette = np.asarray(Image.fromarray(pixels(3)).quantize(16).convert("RGB"))
    np.testing.assert_array_equal(gif, palette)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()
    assert np.abs(gray[..., 0].astype(int) - pixels(4)[..., 0]).mean() < 12  # lossy JPEG
    # The reduced-scale decode is for real JPEGs only: a PNG named .jpg decodes in full.
    assert load_image(images / "synthetic_1.jpg", draft_size=16)[0].shape == (48, 48, 3)
    assert load_image(images / "synthetic_9.jpg", draft_size=16)[0].shape == (24, 24, 3)
    assert load_image(images / "synthetic_4.jpg", draft_size=16)[0].shape == (24, 24, 3)


def test_cache_skips_unchanged_files(bad_pets: Path, monkeypatch) -> None:
    base = find_base(bad_pets)
    names = read_split(base, "trainval")
    decoded: list[Path] = []
    inspect = scanner.inspect_file

    def counting(path: Path, trimap: bool) -> dict:
        decoded.append(path)
        return inspect(path, trimap)

    # scan looks inspect_file up in its own module; the package only re-exports it
    monkeypatch.setattr(scanner, "inspect_file", counting)
    first = scanner.scan(base, names)
    assert len(decoded) == 2 * len(names) - 2 == first.decoded  # ghost image, synthetic_8 trimap
    second = scanner.scan(base, names)
    assert len(decoded) == first.decoded and second.cached == first.decoded
    assert found(second) == found(first)

    Image.fromarray(pixels(5)).save(base / "images" / "synthetic_5.jpg")  # repaired
    third = scanner.scan(base, names)
    assert decoded[-1] == base / "images" / "synthetic_5.jpg" and third.decoded == 1
    assert ("images/synthetic_5.jpg", "truncated") not in found(third)

    (base / scanner.CACHE_NAME).write_text('{"version": 1, "files": {"imag')  # a torn write
    assert scanner.scan(base, names).decoded == 2 * len(names) - 2  # ignored, rebuilt
    assert json.loads((base / scanner.CACHE_NAME).read_text())["version"] == scanner.CACHE_VERSION
    assert not list(base.glob("*.tmp"))

    decoded.clear()  # a second setup over unchanged files decodes nothing
    dm = PetDataModule(bad_pets, download=False, skip_bad=True, num_workers=0)
    with pytest.warns(UserWarning):
        dm.setup("fit")
    assert decoded == []


def test_read_only_dataset_caches_outside_it(tiny_pets: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = find_base(tiny_pets)
    base.chmod(0o555)
    try:
        assert check.main([f"data.root={tiny_pets}"]) == 0
        assert scanner.scan(base, read_split(base, "test")).decoded == 0
    finally:
        base.chmod(0o755)
    assert not (base / scanner.CACHE_NAME).exists()
    assert len(list((tmp_path / "xdg" / "petseg").glob("check-*.json"))) == 1


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_substitutes_a_file_gone_bad_after_setup(tiny_pets: Path, num_workers: int) -> None:
    dm = PetDataModule(
        tiny_pets, download=False, image_size=32, batch_size=3, num_workers=num_workers
    )
    dm.setup("fit")
    name = dm.train_set.names[0]
    (find_base(tiny_pets) / "images" / f"{name}.jpg").write_bytes(b"gone bad")
    if num_workers:  # the worker warns in its own process; it must not die
        batches = list(dm.train_dataloader())
    else:
        with pytest.warns(UserWarning, match=rf"{name}\.jpg: cannot decode image.*next sample"):
            batches = list(dm.train_dataloader())
    assert sum(len(b["image"]) for b in batches) == 9  # the epoch went on, full size
    with pytest.raises(DataError):
        dm.train_set[0]  # the dataset itself still raises


def test_test_names_in_trainval_break_the_check_and_setup(tiny_pets: Path, capsys) -> None:
    base = find_base(tiny_pets)
    with (base / "annotations" / "test.txt").open("a") as f:
        f.write("synthetic_3 1 1 1\nsynthetic_7 1 1 1\n")  # both also in trainval.txt
    assert check.main([f"data.root={tiny_pets}"]) == 1
    out = capsys.readouterr().out
    assert "annotations/test.txt: split-overlap: also in annotations/trainval.txt" in out
    assert "Result: 2 breaking files" in out
    for stage in ("fit", "test"):
        dm = PetDataModule(tiny_pets, download=False, image_size=32, num_workers=0, skip_bad=True)
        with pytest.raises(DataError) as error:
            dm.setup(stage)
        assert str(error.value) == (
            f"{base / 'annotations'}/trainval.txt and test.txt both list 2 names (synthetic_3, "
            "synthetic_7): test images would be trained on; remove them from one list, or skip "
            f"them with `python -m petseg.data.check data.root={tiny_pets} --write-exclude`"
        )
    assert check.main([f"data.root={tiny_pets}", "--write-exclude"]) == 0  # the fix it names
    dm = PetDataModule(tiny_pets, download=False, image_size=32, num_workers=0)
    dm.setup()
    names = {*dm.train_set.names, *dm.val_set.names, *dm.test_set.names}
    assert len(names) == 12 and not {"synthetic_3", "synthetic_7"} & names


@pytest.mark.realdata
def test_check_on_real_subset(pets_mini: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # A read-only copy: the scan cache goes to XDG_CACHE_HOME whether or not ../shared is writable.
    root = tmp_path / "pets"
    base = shutil.copytree(pets_mini / "oxford-iiit-pet", root / "oxford-iiit-pet")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base.chmod(0o555)
    try:
        code = check.main([f"data.root={root}"])
    finally:
        base.chmod(0o755)
    out = capsys.readouterr().out
    print(out)
    assert "596 samples" in out and "Result: " in out
    assert code == 0  # pets-mini: 596 RGB JPEGs with 1/2/3 trimaps of the same size
    assert not (base / scanner.CACHE_NAME).exists()
    assert len(list((tmp_path / "xdg" / "petseg").glob("check-*.json"))) == 1
