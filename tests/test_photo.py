"""petseg.photo: every image mode to RGB uint8 as a viewer shows it (EXIF orientation, 16-bit
scaled, alpha over white), or one line naming the file and the mode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petseg.errors import DataError
from petseg.photo import read_photo, to_rgb

ORIENTATION = 0x0112  # the EXIF tag


def save(img: Image.Image, path: Path, **options) -> Path:
    img.save(path, **options)
    return path


def grey3(values) -> np.ndarray:
    """Expected RGB of grey levels: the level in every channel."""
    values = np.asarray(values, np.uint8)
    return np.repeat(values[..., None], 3, axis=2)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    values = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], np.uint16)
    path = save(Image.fromarray(values), tmp_path / f"grey16.{fmt.lower()}", format=fmt)
    assert Image.open(path).mode == "I;16"
    np.testing.assert_array_equal(read_photo(path), grey3(values >> 8))


def test_16_bit_big_endian_is_scaled() -> None:
    values = np.array([[0, 4660, 65535]], ">u2")
    img = Image.frombytes("I;16B", (3, 1), values.tobytes())
    np.testing.assert_array_equal(to_rgb(img), grey3([[0, 18, 255]]))


def test_32_bit_integer_in_16_bit_range_is_scaled_else_refused(tmp_path: Path) -> None:
    path = save(Image.fromarray(np.array([[0, 512, 65535]], np.int32)), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(read_photo(path), grey3([[0, 2, 255]]))
    wide = save(Image.fromarray(np.array([[0, 70000]], np.int32)), tmp_path / "wide.tif")
    with pytest.raises(DataError, match=r"^.*wide\.tif: .*mode I\) with values 0\.\.70000"):
        read_photo(wide)


def test_float_in_unit_range_is_scaled_else_refused(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0, 0.25]], np.float32)
    path = save(Image.fromarray(values), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_photo(path), grey3([[0, 128, 255, 64]]))
    hdr = save(Image.fromarray(values * 300), tmp_path / "hdr.tif")
    with pytest.raises(DataError, match=r"hdr\.tif: 32-bit float image \(mode F\) .*0\.\.300"):
        read_photo(hdr)


def test_cmyk(tmp_path: Path) -> None:
    pixels = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 255, 0)]
    img = Image.new("CMYK", (4, 1))
    for x, value in enumerate(pixels):
        img.putpixel((x, 0), value)
    path = save(img, tmp_path / "cmyk.tif")
    expected = [[(255, 255, 255), (0, 255, 255), (0, 0, 0), (255, 0, 0)]]  # white cyan black red
    np.testing.assert_array_equal(read_photo(path), np.array(expected, np.uint8))


def test_palette_and_its_transparent_index(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 0, 0, 0])  # red, blue, black
    for x in range(3):
        img.putpixel((x, 0), x)
    plain = save(img, tmp_path / "p.png")
    np.testing.assert_array_equal(read_photo(plain), [[(255, 0, 0), (0, 0, 255), (0, 0, 0)]])
    keyed = save(img, tmp_path / "p_alpha.png", transparency=2)  # black is transparent
    assert Image.open(keyed).mode == "P"
    np.testing.assert_array_equal(read_photo(keyed), [[(255, 0, 0), (0, 0, 255), (255,) * 3]])


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    # RGB black under alpha 0, 255 and 128: white, black, and the mid grey between.
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, 3] = [0, 255, 128]
    path = save(Image.fromarray(rgba), tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_photo(path)[0, :, 0], [255, 0, 127])
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    path = save(la, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    np.testing.assert_array_equal(read_photo(path), grey3([[255, 0, 127]]))
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 255] * 256)
    pa.putpixel((0, 0), (0, 0))
    pa.putpixel((1, 0), (0, 255))
    np.testing.assert_array_equal(to_rgb(pa), [[(255, 255, 255), (0, 0, 255)]])


def test_one_bit_and_grey(tmp_path: Path) -> None:
    bits = Image.fromarray(np.array([[True, False, True]]))
    assert bits.mode == "1"
    path = save(bits, tmp_path / "bits.png")
    np.testing.assert_array_equal(read_photo(path), grey3([[255, 0, 255]]))
    path = save(Image.fromarray(np.array([[7, 200]], np.uint8)), tmp_path / "l.png")
    np.testing.assert_array_equal(read_photo(path), grey3([[7, 200]]))


def test_unknown_mode_is_refused_naming_it() -> None:
    img = Image.new("La", (2, 2))
    with pytest.raises(DataError, match=r"^odd\.png: image mode La has no known conversion"):
        to_rgb(img, "odd.png")


@pytest.mark.parametrize(("orientation", "k"), [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, k: int) -> None:
    stored = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = save(img, tmp_path / "phone.png", exif=exif)  # PNG: lossless, so exact
    np.testing.assert_array_equal(read_photo(path), np.rot90(stored, k))  # k>0: anticlockwise


def test_bad_files_are_one_line_naming_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^.*gone\.jpg: no such file") as missing:
        read_photo(tmp_path / "gone.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    with pytest.raises(DataError, match=r"^.*notes\.jpg: cannot read it as an image") as bad:
        read_photo(text)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"^.*cut\.jpg: cannot read it as an image") as truncated:
        read_photo(cut)
    for error in (missing, bad, truncated):
        assert "\n" not in str(error.value)
