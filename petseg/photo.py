"""A photo from any source as RGB uint8, upright as viewers show it, or one line saying why not.

Pillow's `convert("RGB")` alone is wrong for several modes: 16-bit and 32-bit greys are clipped
at 255 (a 16-bit PNG turns all white), float images likewise, and alpha is dropped, so the
colour hidden under transparent pixels (often black) reaches the network. read_photo applies the
EXIF orientation first (phones store pixels sideways plus a tag), then to_rgb's rules per mode.
Training images are not read here: the dataset's trimaps follow the stored pixels, not EXIF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from petseg.errors import DataError

PLAIN_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
KEYED_MODES = ("L", "P", "RGB")  # transparency as one colour key in img.info
UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
FIX = "save it as an 8-bit RGB or greyscale PNG or JPEG"


def read_photo(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file, EXIF orientation applied; a DataError naming the
    file otherwise (missing, not an image, truncated, or a mode with no sound conversion)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path (a broken link?)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not an image file") from None
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"{path}: cannot read it as an image ({type(e).__name__}: {reason}); "
            "replace the file or remove it from the input"
        ) from None


# to_rgb's rules, in the order it tests them:
# - LA, PA, RGBA, RGBa, and L/P/RGB with a transparency key: composited over white, as on a white
#   page, so transparent areas are plain background rather than whatever the file stored there.
# - RGB, L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion (CMYK without its ICC profile).
# - I;16 (any byte order): the high byte (value >> 8), which keeps the full range.
# - I (32-bit integer): as 16-bit when its values lie in 0..65535 (Pillow's own reading of some
#   16-bit files), refused otherwise.
# - F (32-bit float): x 255 when its values are finite and in [0, 1], refused otherwise (no scale
#   to assume).
# - Any other mode: refused.
def to_rgb(img: Image.Image, path: str | Path = "image") -> np.ndarray:
    """RGB uint8 (H, W, 3) of an open image, by the per-mode rules above."""
    mode = img.mode
    if mode in ALPHA_MODES or (mode in KEYED_MODES and "transparency" in img.info):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, img.convert("RGBA")).convert("RGB"))
    if mode in PLAIN_MODES:
        return np.array(img.convert("RGB"))  # np.array: writable, torch warns on read-only
    if mode in UINT16_MODES:
        return grey((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DataError(
                f"{path}: 32-bit integer image (mode I) with values {low}..{high}, outside the "
                f"16-bit range 0..65535 it is read as; {FIX}"
            )
        return grey((values >> 8).astype(np.uint8))
    if mode == "F":
        values = np.asarray(img)
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(values).all() and low >= 0.0 and high <= 1.0):
            raise DataError(
                f"{path}: 32-bit float image (mode F) with values {low:g}..{high:g}, not in "
                f"[0, 1], so its brightness scale is unknown; {FIX}"
            )
        return grey(np.rint(values * 255.0).astype(np.uint8))
    raise DataError(f"{path}: image mode {mode} has no known conversion to RGB; {FIX}")


def grey(values: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, the grey level in every channel."""
    return np.repeat(values[..., None], 3, axis=2)
