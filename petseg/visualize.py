"""Prediction pictures: fixed validation images with their true and predicted masks, per epoch.

The drawing functions are pure (numpy in, PIL out; torchvision draws the masks and the grid).
`PredictionImages` is the callback that uses them: `<run>/predictions/epoch_NNN.png` grids (rows
images; columns input, ground truth, prediction, prediction over the input, errors),
`predictions/evolution.gif` at the end of fit, and W&B mask overlays when W&B logs.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2.functional import (
    InterpolationMode,
    adjust_brightness,
    resize,
    rgb_to_grayscale,
    to_pil_image,
)
from torchvision.utils import draw_segmentation_masks, make_grid

from petseg.errors import ConfigError
from petseg.media import log_to_wandb, wandb_loggers
from petseg.metrics import argmax_classes

Colour = tuple[int, int, int]  # RGB
Labels = TypeVar("Labels", np.ndarray, torch.Tensor)

# Okabe-Ito colours (colour-blind safe); class i gets PALETTE[i % len(PALETTE)].
PALETTE = [
    (230, 159, 0),  # 0 pet: orange
    (0, 114, 178),  # 1 background: blue
    (240, 228, 66),  # 2 border: yellow
    (0, 158, 115),
    (204, 121, 167),
    (213, 94, 0),
    (86, 180, 233),
    (0, 0, 0),
]
IGNORED: Colour = (128, 128, 128)  # labels outside [0, num_classes): grey
ERROR: Colour = (255, 0, 255)  # wrongly predicted pixels: magenta, in no class's colour
COLUMNS = ("input", "ground truth", "prediction", "overlay", "errors")
OVERLAY_ALPHA = 0.5  # class colour share in the overlay column
DIM = 0.6  # brightness of the greyed input under the errors
GAP = 2  # pixels between tiles and around the grid
LINE = 16  # height of one text line (title, column heads, legend)
MIN_TILE = 96  # small images are scaled up by a whole factor to at least this
WANDB_IGNORED = 255  # mask value W&B gets for labels outside the classes


def class_colour(label: int) -> Colour:
    return PALETTE[label % len(PALETTE)]


def colorize(mask: np.ndarray, num_classes: int = len(PALETTE)) -> torch.Tensor:
    """Labels (H, W) -> uint8 (3, H, W) tile; labels outside [0, num_classes) grey."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W) labels, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"a mask holds integer labels, got dtype {mask.dtype}")
    grey = torch.tensor(IGNORED, dtype=torch.uint8).view(3, 1, 1).expand(3, *mask.shape)
    classes, colours = class_masks(mask, range(num_classes))
    return draw_segmentation_masks(grey, classes, alpha=1.0, colors=colours)


def class_masks(labels: np.ndarray, classes: Sequence[int]) -> tuple[torch.Tensor, list[Colour]]:
    """One bool mask (K, H, W) per label in `classes` and their colours, for
    draw_segmentation_masks and blend."""
    tensor = torch.from_numpy(np.require(labels, requirements=["C", "W"]))
    masks = tensor[None] == torch.tensor(list(classes)).view(-1, 1, 1)
    return masks, [class_colour(label) for label in classes]


def blend(
    rgb: torch.Tensor, masks: torch.Tensor, colours: Sequence[Colour], alpha: float
) -> torch.Tensor:
    """uint8 (3, H, W) with each mask of bool (K, H, W) blended in its colour at `alpha`.

    In [0, 1] floats and rounded: torchvision truncates uint8 blends, which would darken the
    pixels no mask covers by one level at some alphas; here they keep their values.
    """
    drawn = draw_segmentation_masks(rgb.float() / 255, masks, alpha=alpha, colors=list(colours))
    return (drawn * 255).round().to(torch.uint8)


def overlay_tile(rgb: torch.Tensor, pred: np.ndarray, num_classes: int) -> torch.Tensor:
    """The prediction's class colours blended over the uint8 (3, H, W) image."""
    classes, colours = class_masks(pred, range(num_classes))
    return blend(rgb, classes, colours, OVERLAY_ALPHA)


def error_tile(
    rgb: torch.Tensor, mask: np.ndarray, pred: np.ndarray, num_classes: int
) -> torch.Tensor:
    """The image greyed and dimmed, wrongly predicted pixels in ERROR; an ignored label (outside
    [0, num_classes)) is never an error."""
    grey = adjust_brightness(rgb_to_grayscale(rgb, num_output_channels=3), DIM)
    truth = torch.from_numpy(np.ascontiguousarray(mask))
    wrong = (truth != torch.from_numpy(np.ascontiguousarray(pred))) & is_class(truth, num_classes)
    return draw_segmentation_masks(grey, wrong, alpha=1.0, colors=[ERROR])


def is_class(labels: Labels, num_classes: int) -> Labels:
    """True where a label is a class, False where it is ignored (outside [0, num_classes))."""
    return (labels >= 0) & (labels < num_classes)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An image as uint8 (H, W, 3): from float (3, H, W) in [0, 1] (a batch item) or uint8 as is."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"an image is float (3, H, W) or uint8 (H, W, 3), got {image.shape}")
    return (np.clip(image.transpose(1, 2, 0), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def tile_scale(height: int, width: int, min_tile: int = MIN_TILE) -> int:
    """The whole factor that brings the shorter side of an image up to at least min_tile."""
    return max(1, math.ceil(min_tile / max(1, min(height, width))))


def prediction_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    class_names: Sequence[str],
    title: str | None = None,
    min_tile: int = MIN_TILE,
) -> Image.Image:
    """Rows of COLUMNS tiles (input, ground truth, prediction, overlay, errors), column heads, a
    title and a legend (the classes, `ignored` when a mask has such labels, the error colour).

    Size: width `5 * tile_w + 6 * GAP`; height `LINE` per header line (title, column heads),
    `rows * (tile_h + GAP) + GAP` for the tiles and `LINE` per legend line.
    """
    if not len(images) == len(masks) == len(preds) > 0:
        raise ValueError(
            f"need as many images, masks and preds (> 0), got {len(images)}, {len(masks)}, "
            f"{len(preds)}"
        )
    num_classes = len(class_names)
    tiles: list[torch.Tensor] = []  # (3, H, W) uint8 each, len(COLUMNS) per row
    for row, (image, mask, pred) in enumerate(zip(images, masks, preds, strict=True)):
        rgb = torch.from_numpy(to_rgb(image)).permute(2, 0, 1)
        h, w = tiles[0].shape[1:] if tiles else rgb.shape[1:]
        sizes = [tuple(rgb.shape[1:]), np.shape(mask), np.shape(pred)]
        if any(size != (h, w) for size in sizes):
            raise ValueError(f"row {row}: tiles must all be {w}x{h}, got (H, W) {sizes}")
        tiles += [
            rgb,
            colorize(mask, num_classes),
            colorize(pred, num_classes),
            overlay_tile(rgb, pred, num_classes),
            error_tile(rgb, mask, pred, num_classes),
        ]
    scale = tile_scale(h, w, min_tile)
    # Nearest: masks keep exact colours, and the input shows the pixels the model saw.
    big = resize(torch.stack(tiles), [h * scale, w * scale], InterpolationMode.NEAREST_EXACT)
    body = to_pil_image(make_grid(big, nrow=len(COLUMNS), padding=GAP, pad_value=255))
    # Text: torchvision writes labels only on boxes, so PIL writes the heads and the legend.
    font = ImageFont.load_default(size=11)
    entries = [(name, class_colour(label)) for label, name in enumerate(class_names)]
    if not all(is_class(np.asarray(m), num_classes).all() for m in masks):
        entries.append(("ignored", IGNORED))
    legend = legend_lines([*entries, ("error", ERROR)], font, body.width)
    top = LINE * (2 if title else 1)
    grid = Image.new("RGB", (body.width, top + body.height + LINE * len(legend)), "white")
    grid.paste(body, (0, top))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((GAP, 2), title, fill="black", font=font)
    for col, head in enumerate(COLUMNS):
        draw.text((GAP + col * (w * scale + GAP), top - LINE + 2), head, fill="black", font=font)
    y = top + body.height
    for line in legend:
        for x, name, colour in line:
            draw_swatch(draw, x, y, name, colour, font)
        y += LINE
    return grid


def line_height(font: ImageFont.FreeTypeFont) -> int:
    """One legend line for the font: LINE at the grids' 11 px, in proportion otherwise."""
    return round(font.size * LINE / 11)


def swatch_width(name: str, font: ImageFont.FreeTypeFont) -> int:
    """Width of one legend entry as draw_swatch draws it: the square, a gap, the name."""
    return int(font.size) + 2 + math.ceil(font.getlength(name))


def draw_swatch(
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    name: str,
    colour: Colour,
    font: ImageFont.FreeTypeFont,
) -> None:
    """One legend entry one line high with its top left at (x, y): a colour square, its name."""
    side = int(font.size) - 1
    pad = (line_height(font) - side) // 2
    draw.rectangle((x, y + pad, x + side - 1, y + pad + side - 1), fill=colour, outline="black")
    draw.text((x + side + 3, y + pad - 1), name, fill="black", font=font)


def legend_lines(
    entries: Sequence[tuple[str, Colour]], font: ImageFont.FreeTypeFont, width: int
) -> list[list[tuple[int, str, Colour]]]:
    """Legend entries `(name, colour)` as `(x, name, colour)` left to right, wrapped to `width`."""
    lines: list[list[tuple[int, str, Colour]]] = [[]]
    x = GAP
    for name, colour in entries:
        entry = swatch_width(name, font) + 10  # and a space
        if lines[-1] and x + entry > width:
            lines.append([])
            x = GAP
        lines[-1].append((x, name, colour))
        x += entry
    return lines


def legend_box(entries: Sequence[tuple[str, Colour]], font_size: int) -> Image.Image:
    """A white, outlined box of `(name, colour)` entries one per line, to paste on a picture."""
    font = ImageFont.load_default(size=font_size)
    line, pad = line_height(font), max(2, font_size // 3)
    width = max(swatch_width(name, font) for name, _ in entries) + 2 * pad
    box = Image.new("RGB", (width, line * len(entries) + 2 * pad), "white")
    draw = ImageDraw.Draw(box)
    draw.rectangle((0, 0, box.width - 1, box.height - 1), outline="black")
    for i, (name, colour) in enumerate(entries):
        draw_swatch(draw, pad, pad + i * line, name, colour, font)
    return box


def save_gif(frames: Sequence[str | Path], path: str | Path, duration_ms: int = 800) -> Path:
    """An animated GIF of the frame files in order, looping forever."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    images = []
    for frame in frames:
        with Image.open(frame) as img:
            images.append(img.convert("RGB"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False
    )
    return path


def spread_over_breeds(names: Sequence[str], count: int, seed: int = 0) -> list[int]:
    """Indices of `count` names spread over breeds and both species, chosen with `seed`.

    Oxford-IIIT Pet names are `<Breed>_<n>`, cat breeds capitalised, dog breeds not: cats and
    dogs alternate, one image per breed before any breed repeats.
    """
    rng = random.Random(seed)
    by_breed: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_breed.setdefault(name.rsplit("_", 1)[0], []).append(index)
    for indices in by_breed.values():
        rng.shuffle(indices)
    species = [sorted(b for b in by_breed if b[:1].isupper() == cat) for cat in (True, False)]
    for breeds in species:
        rng.shuffle(breeds)
    order = [b for pair in itertools.zip_longest(*species) for b in pair if b is not None]
    chosen: list[int] = []
    while len(chosen) < min(count, len(names)):
        for breed in order:
            if by_breed[breed] and len(chosen) < count:
                chosen.append(by_breed[breed].pop())
    return chosen


class PredictionImages(L.Callback):
    """`num_images` validation images spread over breeds, with true and predicted masks, the
    prediction over the image and its wrong pixels, per val epoch.

    Always writes `<default_root_dir>/predictions/epoch_NNN.png` (and `evolution.gif` at the end
    of fit, when `gif`); with a WandbLogger also logs `val/predictions` as W&B mask overlays, at
    the step of that epoch's val scores.
    Costs one forward of `num_images` images per pictured epoch; skips the sanity check.
    """

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, gif: bool = True, gif_ms: int = 800
    ) -> None:
        if num_images < 1:
            raise ConfigError(
                f"callbacks.prediction_images.num_images must be >= 1, got {num_images}"
            )
        if every_n_epochs < 1:
            raise ConfigError(
                f"callbacks.prediction_images.every_n_epochs must be >= 1, got {every_n_epochs}"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.gif = gif
        self.gif_ms = gif_ms
        self.frames: dict[int, Path] = {}  # epoch -> grid PNG (a later val run of an epoch wins)
        self._samples: tuple[torch.Tensor, torch.Tensor] | None = None

    def _fixed_samples(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """Val images spread over breeds (seeded), read once: the same pictures every epoch."""
        if self._samples is None:
            dataset = getattr(trainer.datamodule, "val_set", None)
            if dataset is None:
                loaders = trainer.val_dataloaders
                dataset = (loaders[0] if isinstance(loaders, list | tuple) else loaders).dataset
            names = getattr(dataset, "names", None)
            indices = (
                spread_over_breeds(names, self.num_images)
                if names
                else range(min(self.num_images, len(dataset)))
            )
            items = [dataset[i] for i in indices]
            images = torch.stack([item["image"] for item in items])  # (N, 3, H, W)
            masks = torch.stack([item["mask"] for item in items])  # (N, H, W)
            self._samples = images, masks
        return self._samples

    @torch.no_grad()
    def _predict(
        self, trainer: L.Trainer, pl_module: L.LightningModule, images: torch.Tensor
    ) -> torch.Tensor:
        was_training = pl_module.training
        pl_module.eval()
        precision = trainer.precision_plugin
        with precision.forward_context():
            logits = pl_module(precision.convert_input(images.to(pl_module.device)))
        pl_module.train(was_training)
        return argmax_classes(logits).cpu()  # (N, H, W)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if epoch % self.every_n_epochs and not last:
            return
        images, masks = self._fixed_samples(trainer)
        preds = self._predict(trainer, pl_module, images)
        class_names = names_of(pl_module, int(max(masks.max(), preds.max())) + 1)
        rgbs = [to_rgb(image) for image in images.float().numpy()]
        grid = prediction_grid(
            rgbs, list(masks.numpy()), list(preds.numpy()), class_names, title=f"epoch {epoch}"
        )
        path = Path(trainer.default_root_dir) / "predictions" / f"epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        self.frames[epoch] = path
        if wandb_loggers(trainer):
            captions = [f"val[{i}] epoch {epoch}" for i in range(len(rgbs))]
            overlays = wandb_overlays(rgbs, masks.numpy(), preds.numpy(), class_names, captions)
            log_to_wandb(trainer, {"val/predictions": overlays, "epoch": epoch})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.gif and self.frames and trainer.is_global_zero:
            frames = [self.frames[epoch] for epoch in sorted(self.frames)]
            save_gif(frames, frames[0].parent / "evolution.gif", self.gif_ms)


def names_of(pl_module: L.LightningModule, num_labels: int) -> list[str]:
    """The module's `class_names`, else `class_<i>` for the labels seen."""
    names = getattr(pl_module, "class_names", None)
    return list(names) if names else [f"class_{i}" for i in range(num_labels)]


def wandb_overlays(
    rgbs: Sequence[np.ndarray],
    masks: np.ndarray,
    preds: np.ndarray,
    class_names: Sequence[str],
    captions: Sequence[str],
) -> list[Any]:
    """One `wandb.Image` per image with `ground_truth` and `predictions` mask layers."""
    import wandb

    labels = dict(enumerate(class_names))

    def layer(mask: np.ndarray) -> dict[str, Any]:
        valid = is_class(mask, len(class_names))
        data = np.where(valid, mask, WANDB_IGNORED).astype(np.uint8)
        layer_labels = labels if valid.all() else {**labels, WANDB_IGNORED: "ignored"}
        return {"mask_data": data, "class_labels": layer_labels}

    return [
        wandb.Image(
            rgb,
            masks={"predictions": layer(pred), "ground_truth": layer(mask)},
            caption=caption,
        )
        for rgb, mask, pred, caption in zip(rgbs, masks, preds, captions, strict=True)
    ]
