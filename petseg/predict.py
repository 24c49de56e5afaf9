"""`python -m petseg.predict ckpt_path=... input=<image or folder> output=<folder>`: new images.

Per image, at its own size: a palette `<name>_mask.png` of trimap values 1/2/3, an overlay and,
with `cutout=true`, a cutout (README's Prediction section). Images are read by `petseg.photo`; an
unreadable one is reported on one line and skipped; exit 1 only when nothing was written. The
network sees the eval resize to `image_size`, as in training; its logits are resized bilinearly to
the image before the argmax, which gives smooth boundaries instead of upsampled labels' staircase.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from petseg.checkpoint import load_module, resolve_device, resolve_image_size
from petseg.config import CONF_DIR
from petseg.data.transforms import eval_pipeline
from petseg.errors import ConfigError, DataError, PetsegError, print_user_error
from petseg.metrics import argmax_classes
from petseg.module import SegModule
from petseg.photo import read_photo
from petseg.tta import apply_tta, tta_options
from petseg.visualize import blend, class_colour, class_masks, legend_box

log = logging.getLogger("petseg.predict")

# Labels are trimap raw values - 1 (petseg.data.oxford.load_trimap), whatever class_names says;
# a 2-class network (data.labels=binary or data.border=ignore) writes pet and background only.
PET, BACKGROUND, BORDER = 0, 1, 2
NUM_CLASSES = (2, 3)
# The overlay's classes, in visualize's class colours; background keeps its pixels (the photo
# reads better untinted, and the pet stands out).
TINTED = {PET: "pet", BORDER: "border"}
OVERLAY_FORMATS = ("png", "jpg")


def list_inputs(source: str | Path | None) -> list[Path]:
    """The image file, or the folder's files (sorted; not subfolders, not hidden files)."""
    if not source:
        raise ConfigError("input is not set; pass input=<an image file or a folder of images>")
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"input={source}: no such file or folder; pass an image or a folder")
    # A broken link is kept: it is then skipped with one line naming it, not silently.
    files = sorted(
        p
        for p in path.iterdir()
        if (p.is_file() or (p.is_symlink() and not p.exists())) and not p.name.startswith(".")
    )
    if not files:
        raise ConfigError(
            f"input={source}: the folder has no files to predict on (subfolders and hidden files "
            "are not read); pass a folder that holds the images"
        )
    return files


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Output name per input: its stem, or `<stem>_<ext>` when two inputs share a stem."""
    counts = Counter(p.stem for p in paths)
    return {p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in paths}


def check_options(cfg: DictConfig) -> None:
    """The output options, checked before the checkpoint loads."""
    if cfg.overlay_format not in OVERLAY_FORMATS:
        raise ConfigError(f"overlay_format={cfg.overlay_format}: use one of {OVERLAY_FORMATS}")
    if not 0.0 <= float(cfg.overlay_alpha) <= 1.0:
        raise ConfigError(f"overlay_alpha={cfg.overlay_alpha} must be in [0, 1]")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a positive integer")


def output_folder(cfg: DictConfig, source: Path) -> Path:
    """`output=`, or `<run dir>/predictions`; never the input folder (its files are inputs)."""
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / "predictions"
    if source.is_dir() and out.resolve() == source.resolve():
        raise ConfigError(
            f"output={out} is the input folder, whose every file is read as an input; "
            f"pass another folder, e.g. output={source / 'predictions'}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output={out}: cannot create the folder ({e.strerror})") from None
    return out


def predict_labels(
    module: SegModule, images: Sequence[np.ndarray], image_size: int, device: torch.device
) -> list[np.ndarray]:
    """Labels uint8 (H, W) per RGB uint8 image (H, W, 3), each at its own size."""
    pipeline = eval_pipeline(image_size)
    x = torch.stack(
        [
            torch.from_numpy(np.ascontiguousarray(pipeline(image=image)["image"])).permute(2, 0, 1)
            for image in images
        ]
    )  # (B, 3, S, S) uint8
    x = x.to(device).float().div_(255.0)  # as the DataModule: [0, 1], no normalisation
    with torch.inference_mode():
        logits = module(x).float()  # (B, C, S, S)
        labels = []
        for i, image in enumerate(images):
            full = F.interpolate(
                logits[i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False
            )  # (1, C, H, W)
            labels.append(argmax_classes(full)[0].to(torch.uint8).cpu().numpy())
    return labels


def tinted(num_classes: int) -> list[int]:
    """The labels the overlay tints: pet, and border when the network has it."""
    return [label for label in TINTED if label < num_classes]


def overlay(
    image: np.ndarray, labels: np.ndarray, alpha: float, num_classes: int = 3
) -> np.ndarray:
    """The image with pet and border pixels blended in their class colour at alpha; background
    as is."""
    rgb = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1)  # (3, H, W)
    masks, colours = class_masks(labels, tinted(num_classes))
    return blend(rgb, masks, colours, alpha).permute(1, 2, 0).numpy()


def overlay_picture(
    image: np.ndarray, labels: np.ndarray, alpha: float, num_classes: int, legend: bool
) -> Image.Image:
    """The overlay, with (when `legend`) its classes and colours boxed in the top-left corner,
    sized to the picture; left out where the box would cover more than half its width or height."""
    picture = Image.fromarray(overlay(image, labels, alpha, num_classes))
    if legend:
        font_size = max(11, round(min(picture.size) / 30))
        box = legend_box([(TINTED[c], class_colour(c)) for c in tinted(num_classes)], font_size)
        margin = font_size // 2
        if (
            2 * (margin + box.width) <= picture.width
            and 2 * (margin + box.height) <= picture.height
        ):
            picture.paste(box, (margin, margin))
    return picture


def cutout(image: np.ndarray, labels: np.ndarray, keep_border: bool) -> np.ndarray:
    """RGBA: the pet (with the border when keep_border) opaque, the rest transparent and black."""
    keep = labels != BACKGROUND if keep_border else labels == PET
    alpha = np.where(keep, 255, 0).astype(np.uint8)
    return np.dstack([image * keep[..., None].astype(np.uint8), alpha])


def mask_png(labels: np.ndarray) -> Image.Image:
    """Labels (H, W) as a trimap PNG: palette indices label + 1, so the dataset's own reader
    (petseg.data.oxford.load_trimap) reads it, coloured with the training pictures' palette."""
    image = Image.fromarray((labels + 1).astype(np.uint8), mode="P")
    colors = [(0, 0, 0), *(class_colour(label) for label in range(3))]  # index 0 is unused
    image.putpalette([channel for color in colors for channel in color])
    return image


def save_outputs(
    image: np.ndarray, labels: np.ndarray, out: Path, name: str, cfg: DictConfig, num_classes: int
) -> list[Path]:
    """Mask, overlay and (with cfg.cutout) cutout of one image; returns the files written."""
    files = [out / f"{name}_mask.png", out / f"{name}_overlay.{cfg.overlay_format}"]
    mask_png(labels).save(files[0])
    picture = overlay_picture(
        image, labels, float(cfg.overlay_alpha), num_classes, bool(cfg.overlay_legend)
    )
    picture.save(files[1], **({"quality": 90} if cfg.overlay_format == "jpg" else {}))
    if cfg.cutout:
        files.append(out / f"{name}_cutout.png")
        Image.fromarray(cutout(image, labels, bool(cfg.cutout_border))).save(files[2])
    return files


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image of `cfg.input` with `cfg.ckpt_path`, writing to `cfg.output`.

    Returns `written` (input path -> files written), `skipped` (input path -> reason), `output`,
    `image_size`, `device` and `tta` (its description). Raises ConfigError for a missing option,
    file or folder.
    """
    paths = list_inputs(cfg.get("input"))
    check_options(cfg)
    tta = tta_options(cfg)
    device = resolve_device(cfg.get("device"))
    ckpt_path = cfg.get("ckpt_path")
    module = load_module(ckpt_path)
    net = module.hparams.net
    if net.get("num_classes") not in NUM_CLASSES:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: the network has {net.get('num_classes')} classes; masks are "
            "written as trimaps, which need 3 (pet, background, border) or 2 (pet, background)"
        )
    image_size, source = resolve_image_size(cfg.get("image_size"), net, ckpt_path)
    out = output_folder(cfg, Path(cfg.input))
    module = apply_tta(module, tta).eval().to(device)
    log.info(
        "%s at %d px (%s) on %s, %s: %d file(s) -> %s",
        net["_target_"].rsplit(".", 1)[-1], image_size, source, device, tta.describe(),
        len(paths), out,
    )  # fmt: skip

    names = output_names(paths)
    written: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        labels = predict_labels(module, [image for _, image in batch], image_size, device)
        for (path, image), label_map in zip(batch, labels, strict=True):
            files = save_outputs(image, label_map, out, names[path], cfg, net["num_classes"])
            written[str(path)] = [str(f) for f in files]
        batch.clear()

    for path in tqdm(paths, desc="predict", unit="img", disable=None):
        try:
            image = read_photo(path)  # upright (EXIF), any mode to RGB uint8, or one line
        except DataError as e:
            log.warning("skipped %s", e)
            skipped[str(path)] = str(e)
            continue
        batch.append((path, image))
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    return {
        "written": written,
        "skipped": skipped,
        "output": str(out),
        "image_size": image_size,
        "device": str(device),
        "tta": tta.describe(),
    }


def run(cfg: DictConfig) -> int:
    """The CLI minus Hydra: prints the summary (or one `error:` line); returns the exit code."""
    try:
        result = predict(cfg)
    except PetsegError as e:
        print_user_error(e, log)
        return 1
    written, skipped = len(result["written"]), len(result["skipped"])
    print(f"{written} written, {skipped} skipped -> {result['output']}")
    if not written:
        print(
            f"error: input={cfg.input}: none of the {skipped} file(s) could be read as an image",
            file=sys.stderr,
        )
        return 1
    return 0


@hydra.main(config_path=str(CONF_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
