"""petseg.predict: masks at each image's own size in trimap values, overlays, cutouts; bad files
are skipped one line each; nothing written or no input is exit 1."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from PIL import Image

from petseg.data.transforms import eval_pipeline
from petseg.errors import ConfigError
from petseg.module import SegModule
from petseg.photo import read_photo
from petseg.predict import output_names, predict, run
from petseg.train import train

from conftest import TINY as TINY_RUN
from conftest import cli_config, compose_config, single_thread
from stub_nets import stub_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_RUN,  # synthetic 8 + 4 images, 32 px, segnet_dsc
    "data.batch_size=4",
    "data.num_workers=0",
    "data.pin_memory=false",
    "trainer.max_epochs=1",
    "test=false",
    "logger=csv",
]
GOOD = {"photo.jpg": (50, 37), "rgba.png": (120, 80), "gray.jpg": (64, 48)}  # name: (W, H)
BAD = ("notes.txt", "broken.jpg")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segnet_dsc trained 1 epoch at 32 px, in a run folder as the CLI leaves it."""
    with single_thread():
        tmp = tmp_path_factory.mktemp("train")
        base = [f"paths.root_dir={tmp}", "trainer.accelerator=cpu", "trainer.devices=1"]
        cfg = compose_config([*base, *TINY])
        run_dir = tmp / "run"
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        train(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(
            cfg, run_dir / ".hydra" / "config.yaml"
        )  # Hydra writes it beside checkpoints/
        return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """3 readable images of odd sizes and modes, a text file and a truncated JPEG."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def noise(w: int, h: int, c: int) -> np.ndarray:
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)

    Image.fromarray(noise(*GOOD["photo.jpg"], 3)).save(folder / "photo.jpg", quality=90)
    Image.fromarray(noise(*GOOD["rgba.png"], 4)).save(folder / "rgba.png")
    Image.fromarray(noise(*GOOD["gray.jpg"], 1)[..., 0]).save(folder / "gray.jpg", format="PNG")
    (folder / "notes.txt").write_text("not an image\n")
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64, 3)).save(buf, format="JPEG")
    (folder / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "sub").mkdir()  # subfolders are not read
    return folder


def predict_config(tmp_path: Path, *overrides: str):
    return cli_config("predict", tmp_path, *overrides)


@pytest.fixture(scope="module")
def stub_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BrightIsPet (tests/stub_nets.py): pet where the photo is bright, background where dark."""
    return stub_checkpoint(tmp_path_factory.mktemp("stub") / "stub.ckpt")


def predict_stub(stub_ckpt: Path, folder: Path, out: Path) -> dict:
    """predict() with the stub at 16 px, CPU, one thread."""
    cfg = predict_config(
        out.parent, f"ckpt_path={stub_ckpt}", f"input={folder}", f"output={out}",
        "image_size=16", "device=cpu",
    )  # fmt: skip
    with single_thread():
        return predict(cfg)


def mask_of(out: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / f"{stem}_mask.png"))


def test_predict_mixed_folder(ckpt: Path, mixed: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    cfg = predict_config(
        tmp_path, f"ckpt_path={ckpt}", f"input={mixed}", f"output={out}", "cutout=true"
    )
    assert run(cfg) == 0
    printed = capsys.readouterr()
    assert "3 written, 2 skipped" in printed.out

    result = predict(cfg)  # the same again, through the function the CLI wraps
    assert result["image_size"] == 32  # data.image_size of the run that wrote the checkpoint
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert sorted(Path(p).name for p in result["written"]) == sorted(GOOD)
    assert sorted(Path(p).name for p in result["skipped"]) == sorted(BAD)
    for path, reason in result["skipped"].items():
        assert reason.startswith(path) and "\n" not in reason
    for name, (w, h) in GOOD.items():
        stem = Path(name).stem
        files = [out / f"{stem}_{kind}.png" for kind in ("mask", "overlay", "cutout")]
        assert result["written"][str(mixed / name)] == [str(f) for f in files]
        mask, over, cut = (Image.open(f) for f in files)
        assert (mask.mode, mask.size) == ("P", (w, h))
        assert (over.mode, over.size) == ("RGB", (w, h))
        assert (cut.mode, cut.size) == ("RGBA", (w, h))
        values = np.asarray(mask)
        assert set(np.unique(values).tolist()) <= {1, 2, 3}
        alpha = np.asarray(cut)[..., 3]
        np.testing.assert_array_equal(alpha == 0, values == 2)  # 2: background
        assert set(np.unique(alpha).tolist()) <= {0, 255}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{Path(n).stem}_{k}.png" for n in GOOD for k in ("mask", "overlay", "cutout")
    )


def test_image_size_sources_and_single_file(ckpt: Path, mixed: Path, tmp_path: Path) -> None:
    image = mixed / "rgba.png"
    common = [f"input={image}", "overlay_format=jpg"]
    lone = tmp_path / "lone" / "model.ckpt"  # no run folder around it: the default size
    lone.parent.mkdir()
    shutil.copy(ckpt, lone)
    result = predict(predict_config(tmp_path, f"ckpt_path={lone}", *common))
    assert result["image_size"] == 128
    assert Path(result["output"]) == tmp_path / "predict" / "predictions"
    mask, overlay = (Image.open(f) for f in result["written"][str(image)])
    assert mask.size == overlay.size == GOOD["rgba.png"] and overlay.format == "JPEG"

    result = predict(predict_config(tmp_path, f"ckpt_path={ckpt}", "image_size=64", *common))
    assert result["image_size"] == 64
    with pytest.raises(ConfigError, match=r"^image_size=40 .* multiple of 16"):
        predict(predict_config(tmp_path, f"ckpt_path={ckpt}", "image_size=40", *common))


def test_nothing_readable_is_exit_1(ckpt: Path, mixed: Path, tmp_path: Path, capsys) -> None:
    for name in GOOD:
        (mixed / name).unlink()
    cfg = predict_config(tmp_path, f"ckpt_path={ckpt}", f"input={mixed}", f"output={tmp_path}/o")
    assert run(cfg) == 1
    printed = capsys.readouterr()
    assert "0 written, 2 skipped" in printed.out
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"input={mixed}" in errors[0]


def test_missing_options_are_config_errors(ckpt: Path, mixed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^input is not set"):
        predict(predict_config(tmp_path, f"ckpt_path={ckpt}"))
    with pytest.raises(ConfigError, match=r"^input=.*nowhere: no such file or folder"):
        predict(predict_config(tmp_path, f"ckpt_path={ckpt}", f"input={tmp_path}/nowhere"))
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*nope\.ckpt: no such file"):
        predict(predict_config(tmp_path, f"ckpt_path={tmp_path}/nope.ckpt", f"input={mixed}"))
    with pytest.raises(ConfigError, match=r"^output=.* is the input folder"):
        predict(predict_config(tmp_path, f"ckpt_path={ckpt}", f"input={mixed}", f"output={mixed}"))


def test_output_names_keep_inputs_apart() -> None:
    paths = [Path("a/cat.jpg"), Path("a/cat.png"), Path("a/dog.jpg")]
    assert list(output_names(paths).values()) == ["cat_jpg", "cat_png", "dog"]


def test_cli_empty_folder_is_one_error_line(ckpt: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.predict", f"ckpt_path={ckpt}", f"input={empty}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"input={empty}" in errors[0] and "no files" in errors[0]
    assert "Traceback" not in proc.stderr


def test_exif_orientation_mask_lines_up_with_the_photo_as_shown(
    stub_ckpt: Path, tmp_path: Path
) -> None:
    """A phone JPEG (pixels stored sideways + an Orientation tag) gives the mask of the photo as a
    viewer shows it: the shown size, and the same mask as the photo physically rotated."""
    stored = np.zeros((24, 40, 3), np.uint8)  # (H, W, 3) as stored: dark ...
    stored[:12, :20] = 255  # ... with a bright top-left quarter
    folder = tmp_path / "in"
    folder.mkdir()
    # Orientation 6: shown turned 90 degrees clockwise; 8: anticlockwise (np.rot90's k).
    turns = {6: -1, 8: 1}
    for tag, k in turns.items():
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(stored).save(folder / f"tagged{tag}.jpg", quality=95, exif=exif)
        with Image.open(folder / f"tagged{tag}.jpg") as img:  # its pixels, no transpose
            decoded = np.asarray(img.convert("RGB"))
        Image.fromarray(np.rot90(decoded, k)).save(folder / f"turned{tag}.png")
    out = tmp_path / "out"
    result = predict_stub(stub_ckpt, folder, out)
    assert not result["skipped"]
    for tag in turns:
        mask = mask_of(out, f"tagged{tag}")
        assert mask.shape == (40, 24)  # (H, W) as shown: the stored 40x24 turned upright
        np.testing.assert_array_equal(mask, mask_of(out, f"turned{tag}"))
        overlay = np.asarray(Image.open(out / f"tagged{tag}_overlay.png"))
        np.testing.assert_array_equal(
            overlay, np.asarray(Image.open(out / f"turned{tag}_overlay.png"))
        )
    # The bright quarter, shown top-right (6) or bottom-left (8), is the pet there.
    assert mask_of(out, "tagged6")[5, 20] == 1 and mask_of(out, "tagged6")[35, 3] == 2
    assert mask_of(out, "tagged8")[35, 3] == 1 and mask_of(out, "tagged8")[5, 20] == 2


def test_16_bit_alpha_and_float_photos_read_as_shown(stub_ckpt: Path, tmp_path: Path) -> None:
    """16-bit grey is scaled (not clipped to white), alpha is composited over white (not dropped,
    exposing the black stored under it), a float image with no known scale is skipped in a line."""
    folder = tmp_path / "in"
    folder.mkdir()
    grey16 = np.full((20, 32), 10000, np.uint16)  # dark (39 of 255) ...
    grey16[:, 16:] = 60000  # ... and bright (234) halves
    Image.fromarray(grey16).save(folder / "scan16.png")
    rgba = np.zeros((20, 32, 4), np.uint8)  # black everywhere ...
    rgba[:, :16, 3] = 255  # ... opaque on the left, transparent on the right
    Image.fromarray(rgba).save(folder / "cutout.png")
    Image.fromarray(np.full((20, 32), 7.5, np.float32)).save(folder / "depth.tif")
    out = tmp_path / "out"
    result = predict_stub(stub_ckpt, folder, out)
    for stem in ("scan16", "cutout"):  # left half background (2), right half pet (1)
        mask = mask_of(out, stem)
        assert (mask[:, :14] == 2).all() and (mask[:, 18:] == 1).all(), stem
    overlay = np.asarray(Image.open(out / "cutout_overlay.png"))
    assert (overlay[:, :14] == 0).all()  # background pixels keep the photo: opaque black
    assert list(result["skipped"]) == [str(folder / "depth.tif")]
    reason = result["skipped"][str(folder / "depth.tif")]
    assert reason.startswith(f"{folder / 'depth.tif'}: 32-bit float image (mode F)")
    assert "\n" not in reason


def test_missing_and_unreadable_files_are_one_line_each(
    stub_ckpt: Path, tmp_path: Path, capsys
) -> None:
    """A broken link (a file gone) and a file that is no image: skipped, one line naming each."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "good.png")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "notes.jpg").write_text("not an image\n")
    cfg = predict_config(
        tmp_path, f"ckpt_path={stub_ckpt}", f"input={folder}", f"output={tmp_path}/out",
        "image_size=16", "device=cpu",
    )  # fmt: skip
    assert run(cfg) == 0
    assert "1 written, 2 skipped" in capsys.readouterr().out
    skipped = predict(cfg)["skipped"]
    assert sorted(skipped) == [str(folder / "gone.jpg"), str(folder / "notes.jpg")]
    assert skipped[str(folder / "gone.jpg")].startswith(f"{folder / 'gone.jpg'}: no such file")
    notes = skipped[str(folder / "notes.jpg")]
    assert notes.startswith(f"{folder / 'notes.jpg'}: cannot read it as an image")
    assert all("\n" not in reason for reason in skipped.values())


def test_tta_masks_are_the_averaged_prediction(ckpt: Path, mixed: Path, tmp_path: Path) -> None:
    """hflip x scales [0.75, 1, 1.25] at 32 px (segnet_dsc, stride 16: 32, 32, 48 px passes):
    the mask is the argmax of the mean softmax, computed here by hand, at the photo's size."""
    photo = mixed / "photo.jpg"
    tta = ["tta.hflip=true", "tta.scales=[0.75,1,1.25]"]
    common = [f"ckpt_path={ckpt}", f"input={photo}", "image_size=32", "device=cpu"]
    with single_thread():
        plain = predict(predict_config(tmp_path, *common, f"output={tmp_path}/plain"))
        result = predict(predict_config(tmp_path, *common, f"output={tmp_path}/tta", *tta))
        assert result["tta"].startswith("tta: softmax averaged over 6 passes")
        assert plain["tta"] == "tta=none"

        net = SegModule.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
        image = read_photo(photo)  # (37, 50, 3)
        x = torch.from_numpy(eval_pipeline(32)(image=image)["image"]).permute(2, 0, 1)[None]
        x = x.float() / 255  # (1, 3, 32, 32)
        probs = torch.zeros(1, 3, 32, 32)
        with torch.no_grad():
            for side in (32, 32, 48):
                xs = F.interpolate(x, (side, side), mode="bilinear", align_corners=False)
                for logits in (net(xs), net(xs.flip(-1)).flip(-1)):
                    back = F.interpolate(logits, (32, 32), mode="bilinear", align_corners=False)
                    probs += back.softmax(1) / 6
        full = F.interpolate(probs.log(), (37, 50), mode="bilinear", align_corners=False)
    expected = full.argmax(1)[0].numpy().astype(np.uint8) + 1  # trimap values
    np.testing.assert_array_equal(mask_of(tmp_path / "tta", "photo"), expected)
    assert (mask_of(tmp_path / "plain", "photo") != expected).any()  # TTA changed some pixels


def test_hflip_tta_of_a_mirror_equivariant_network_keeps_the_masks(
    stub_ckpt: Path, tmp_path: Path
) -> None:
    """BrightIsPet is per pixel (it commutes with a flip): hflip TTA writes the same masks."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(folder / "a.png")
    predict_stub(stub_ckpt, folder, tmp_path / "plain")
    cfg = predict_config(
        tmp_path, f"ckpt_path={stub_ckpt}", f"input={folder}", f"output={tmp_path}/tta",
        "image_size=16", "device=cpu", "tta=hflip",
    )  # fmt: skip
    with single_thread():
        predict(cfg)
    np.testing.assert_array_equal(mask_of(tmp_path / "tta", "a"), mask_of(tmp_path / "plain", "a"))


def test_bad_tta_is_one_line(mixed: Path, tmp_path: Path, capsys) -> None:
    cfg = predict_config(tmp_path, f"input={mixed}", "tta.scales=[1,-0.5]")  # no ckpt_path
    assert run(cfg) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: tta.scales=[1, -0.5] must be a non-empty list of numbers > 0, e.g. "
        "tta.scales=[0.75,1,1.25] (1: the size the network runs at)"
    ]


def test_mask_is_a_palette_png_of_trimap_values(ckpt: Path, mixed: Path, tmp_path: Path) -> None:
    from petseg.data.oxford import load_trimap
    from petseg.visualize import class_colour

    out = tmp_path / "out"
    cfg = predict_config(tmp_path, f"ckpt_path={ckpt}", f"input={mixed}", f"output={out}")
    with single_thread():
        result = predict(cfg)
    mask_file = Path(next(iter(result["written"].values()))[0])
    with Image.open(mask_file) as mask:
        assert mask.mode == "P"  # coloured in a viewer (mode L with 1..3 looks black)
        values = set(np.unique(np.asarray(mask)).tolist())
        palette = mask.getpalette()
    assert values <= {1, 2, 3} and values
    assert tuple(palette[3:6]) == class_colour(0)  # index 1 (pet): the training pictures' colour
    assert set(np.unique(load_trimap(mask_file)).tolist()) == {v - 1 for v in values}


def test_overlay_blends_pet_and_border_in_the_training_palette() -> None:
    from petseg.predict import overlay
    from petseg.visualize import PALETTE

    image = np.array([[[10, 20, 30], [200, 100, 50], [90, 90, 90]]], np.uint8)  # (1, 3, 3)
    labels = np.array([[0, 1, 2]], np.uint8)  # pet, background, border
    full = overlay(image, labels, alpha=1.0)
    assert full[0].tolist() == [list(PALETTE[0]), [200, 100, 50], list(PALETTE[2])]
    half = overlay(image, labels, alpha=0.5).astype(float)
    expected = [(image[0, 0] + PALETTE[0]) / 2, image[0, 1], (image[0, 2] + PALETTE[2]) / 2]
    np.testing.assert_allclose(half[0], expected, atol=0.5)
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    background = np.ones((16, 16), np.uint8)  # every level, untinted at an alpha where a uint8
    np.testing.assert_array_equal(overlay(ramp, background, alpha=0.1), ramp)  # blend truncates
    two = overlay(image, labels, alpha=1.0, num_classes=2)  # a 2-class network tints pet only
    assert two[0].tolist() == [list(PALETTE[0]), [200, 100, 50], [90, 90, 90]]


def test_overlay_legend_sits_in_the_corner_when_it_fits() -> None:
    from petseg.predict import overlay, overlay_picture
    from petseg.visualize import PALETTE

    image = np.full((150, 200, 3), 60, np.uint8)
    labels = np.ones((150, 200), np.uint8)  # background ...
    labels[60:, 100:] = 0  # ... with a pet in the bottom-right quarter
    plain = overlay(image, labels, 0.5)
    shown = np.asarray(overlay_picture(image, labels, 0.5, 3, legend=True))
    differs = (shown != plain).any(-1)
    ys, xs = np.nonzero(differs)
    assert ys.max() < 75 and xs.max() < 100  # only in the top-left quarter
    corner = shown[: ys.max() + 1, : xs.max() + 1]
    assert (corner == 255).all(-1).mean() > 0.3  # a white box ...
    for colour in (PALETTE[0], PALETTE[2]):  # ... with a swatch of each tinted class
        assert (corner == colour).all(-1).sum() >= 64
    np.testing.assert_array_equal(np.asarray(overlay_picture(image, labels, 0.5, 3, False)), plain)
    pet_only = np.asarray(overlay_picture(image, labels, 0.5, 2, legend=True))
    assert not (pet_only[: ys.max() + 1, : xs.max() + 1] == PALETTE[2]).all(-1).any()
    tiny = np.asarray(overlay_picture(image[:40, :60], labels[:40, :60], 0.5, 3, legend=True))
    np.testing.assert_array_equal(tiny, plain[:40, :60])  # no room: no legend


def test_predicted_overlay_file_uses_the_palette_and_has_a_legend(
    stub_ckpt: Path, tmp_path: Path
) -> None:
    from petseg.visualize import PALETTE

    photo = np.full((160, 240, 3), 30, np.uint8)  # dark: background ...
    photo[:, 120:] = 230  # ... bright right half: pet (BrightIsPet)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "half.png")
    predict_stub(stub_ckpt, folder, tmp_path / "out")
    shown = np.asarray(Image.open(tmp_path / "out" / "half_overlay.png")).astype(float)
    pet = (np.array([230.0] * 3) + PALETTE[0]) / 2
    np.testing.assert_allclose(shown[80:, 130:], np.broadcast_to(pet, (80, 110, 3)), atol=0.5)
    assert (shown[80:, :110] == 30).all()  # background keeps the photo's pixels
    assert (shown[:40, :40] == 255).all(-1).any() and (shown[:40, :40] == PALETTE[0]).all(-1).any()
