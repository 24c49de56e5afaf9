"""Prediction pictures: the pure drawing functions; the callback in a tiny run with offline W&B."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from petseg.errors import ConfigError
from petseg.train import train
from petseg.visualize import (
    COLUMNS,
    DIM,
    ERROR,
    GAP,
    IGNORED,
    LINE,
    PALETTE,
    PredictionImages,
    colorize,
    prediction_grid,
    save_gif,
    spread_over_breeds,
    tile_scale,
    to_rgb,
)

from conftest import TINY

NAMES = ["pet", "background", "border"]
LAYERS = ("ground_truth", "predictions")
COLS = len(COLUMNS)  # input, ground truth, prediction, overlay, errors


def grid_width(tile: int) -> int:
    return COLS * tile + (COLS + 1) * GAP


def hwc(tile) -> np.ndarray:
    """A (3, H, W) tensor tile as the (H, W, 3) array a PNG holds."""
    return tile.permute(1, 2, 0).numpy()


def test_colorize_gives_each_class_its_colour_and_ignored_grey() -> None:
    mask = np.array([[0, 1], [2, -100]])
    rgb = hwc(colorize(mask, num_classes=3))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [230, 159, 0]  # pet: orange
    assert rgb[0, 1].tolist() == [0, 114, 178]  # background: blue
    assert rgb[1, 0].tolist() == [240, 228, 66]  # border: yellow
    assert rgb[1, 1].tolist() == list(IGNORED)
    assert hwc(colorize(np.array([[3]]), num_classes=3))[0, 0].tolist() == list(IGNORED)
    assert hwc(colorize(np.fliplr(mask), 3))[0, 0].tolist() == [0, 114, 178]  # any strides
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="integer labels"):
        colorize(np.zeros((2, 2), np.float32))


def test_to_rgb_scales_clips_and_moves_channels_last() -> None:
    image = np.zeros((3, 1, 4), np.float32)
    image[:, 0] = [0.0, 1.0, 2.0, -1.0]  # every channel
    rgb = to_rgb(image)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 255, 255, 0]
    assert to_rgb(rgb) is rgb  # uint8 (H, W, 3) passes through


@pytest.mark.parametrize(
    ("size", "rows", "title"), [(32, 1, None), (32, 3, "epoch 2"), (128, 2, "x")]
)
def test_grid_is_rows_by_five_tiles_in_place(size: int, rows: int, title: str | None) -> None:
    colour = np.array([10, 200, 30], np.uint8)
    images = [np.broadcast_to(colour, (size, size, 3)).copy() for _ in range(rows)]
    masks = [np.full((size, size), 2) for _ in range(rows)]  # border everywhere
    preds = [np.full((size, size), r % 3) for r in range(rows)]  # row r predicts class r
    grid = prediction_grid(images, masks, preds, NAMES, title=title)

    tile = size * tile_scale(size, size)
    assert tile == max(size, 96)
    top = LINE * (2 if title else 1)
    assert grid.size == (grid_width(tile), top + rows * (tile + GAP) + GAP + LINE)
    pixels = np.asarray(grid).astype(int)
    for r in range(rows):
        y = top + GAP + r * (tile + GAP) + tile // 2
        centres = [pixels[y, GAP + c * (tile + GAP) + tile // 2] for c in range(COLS)]
        image, truth, pred, over, errors = centres
        assert image.tolist() == colour.tolist() and truth.tolist() == [240, 228, 66], r
        assert pred.tolist() == list(PALETTE[r % 3]), r
        blend = (colour.astype(float) + PALETTE[r % 3]) / 2  # half photo, half class colour
        np.testing.assert_allclose(over, blend, atol=1)
        if r % 3 == 2:  # right: the photo grey and dimmed
            assert errors[0] == errors[1] == errors[2] <= DIM * 255 + 1, r
        else:
            assert errors.tolist() == list(ERROR), r


def tile_at(grid: Image.Image, row: int, col: int, size: int, top: int = LINE) -> np.ndarray:
    """Tile (row, col) of a grid drawn at scale 1 (min_tile=size), as (size, size, 3)."""
    y, x = top + GAP + row * (size + GAP), GAP + col * (size + GAP)
    return np.asarray(grid)[y : y + size, x : x + size]


def test_error_column_marks_exactly_the_wrong_pixels_and_not_ignored_ones() -> None:
    image = np.full((4, 4, 3), 200, np.uint8)
    image[:, :2] = (40, 90, 160)  # a darker left half: the greyed copy keeps it darker
    mask = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [-100, -100, 1, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1], [0, 1, 1, 1], [0, 1, 2, 0]])
    wrong = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]], bool)
    grid = prediction_grid([image], [mask], [pred], NAMES, min_tile=4)
    assert grid.size[0] == grid_width(4)

    errors = tile_at(grid, 0, COLUMNS.index("errors"), 4)
    np.testing.assert_array_equal((errors == ERROR).all(-1), wrong)  # ignored (-100) not wrong
    right = errors[~wrong].astype(int)
    assert (right[:, 0] == right[:, 1]).all() and (right[:, 1] == right[:, 2]).all()  # grey
    assert right.max() <= DIM * 255 + 1  # and dimmed: the photo's 200 is darker
    assert errors[0, 0, 0] < errors[0, 3, 0]  # still the photo: its dark half stays darker

    over = tile_at(grid, 0, COLUMNS.index("overlay"), 4).astype(float)
    expected = (image + np.array([PALETTE[label] for label in pred.flat]).reshape(4, 4, 3)) / 2
    np.testing.assert_allclose(over, expected, atol=1)
    truth = tile_at(grid, 0, COLUMNS.index("ground truth"), 4)
    np.testing.assert_array_equal(truth, hwc(colorize(mask, 3)))


def legend_of(grid: Image.Image, lines: int = 1) -> np.ndarray:
    return np.asarray(grid)[-LINE * lines :]


def has_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    """A legend swatch of `colour` (its 8x8 inside; text anti-aliasing gives a few pixels)."""
    return int((pixels == colour).all(-1).sum()) >= 64


def test_legend_has_the_classes_the_error_colour_and_ignored_when_there() -> None:
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64)
    legend = legend_of(prediction_grid([image], [mask], [mask], NAMES))
    assert all(has_colour(legend, PALETTE[i]) for i in range(3)) and has_colour(legend, ERROR)
    assert not has_colour(legend, IGNORED)
    mask[0, 0] = -100
    legend = legend_of(prediction_grid([image], [mask], [np.zeros_like(mask)], NAMES))
    assert has_colour(legend, IGNORED) and has_colour(legend, ERROR)


def test_grid_legend_wraps_long_class_names() -> None:
    images, masks = [np.zeros((32, 32, 3), np.uint8)], [np.zeros((32, 32), np.int64)]
    short = prediction_grid(images, masks, masks, NAMES)
    long = prediction_grid(
        images, masks, masks, [f"a rather long class name {i}" for i in range(6)]
    )
    assert long.width == short.width and long.height > short.height + LINE


def test_grid_needs_matching_inputs() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="as many"):
        prediction_grid([image], [], [], NAMES)
    with pytest.raises(ValueError, match="tiles must all be 32x32"):
        prediction_grid([image], [np.zeros((16, 16), int)], [np.zeros((32, 32), int)], NAMES)


def test_save_gif_has_every_frame_and_loops(tmp_path: Path) -> None:
    frames = []
    for i, colour in enumerate(["red", "blue", "green"]):
        frames.append(tmp_path / f"epoch_{i:03d}.png")
        Image.new("RGB", (20, 10), colour).save(frames[-1])
    gif = save_gif(frames, tmp_path / "evolution.gif", duration_ms=300)
    with Image.open(gif) as img:
        assert img.n_frames == 3 and img.size == (20, 10)
        assert img.info["loop"] == 0 and img.info["duration"] == 300


@pytest.mark.parametrize("option", ["num_images", "every_n_epochs"])
def test_callback_options_are_checked(option: str) -> None:
    with pytest.raises(ConfigError, match=f"callbacks.prediction_images.{option} must be >= 1"):
        PredictionImages(**{option: 0})


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a `.wandb` file (wandb's LevelDB-style log: 32 KiB blocks of
    chunks, each `crc32 u32, length u16, type u8` then data; type 1 full, 2 first, 3 middle,
    4 last). wandb 0.31 ships no Python reader, so a small one here."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Each logged history row as {"a/b": value}, nested keys joined with "/"."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
    return rows


@pytest.mark.slow
def test_tiny_run_writes_grids_gif_and_wandb_masks(cfg_factory, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = cfg_factory(
        *TINY,
        "data.val_fraction=0.25",  # 2 val images: a grid of 2 rows
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "test=false",
    )
    assert cfg.callbacks.prediction_images.num_images == 8  # more than the 2 val images
    metrics = train(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    pictured = spread_over_breeds(datamodule.val_set.names, 8)  # the callback's (seeded) order
    val_masks = [datamodule.val_set[i]["mask"].numpy() for i in pictured]
    assert len(val_masks) == 2

    # Local: one grid per epoch (not the sanity check), 2 rows x 5 tiles of 96 px, and the GIF.
    run = Path(cfg.paths.output_dir)
    folder = run / "predictions"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch_000.png",
        "epoch_001.png",
        "evolution.gif",
    ]
    tile, top = 96, 2 * LINE
    for png in ("epoch_000.png", "epoch_001.png"):
        grid = np.asarray(Image.open(folder / png).convert("RGB"))
        assert grid.shape == (top + 2 * (tile + GAP) + GAP + LINE, grid_width(tile), 3)
        for row, mask in enumerate(val_masks):  # the ground-truth column is the val set's masks
            y, x = top + GAP + row * (tile + GAP), 2 * GAP + tile
            shown = grid[y : y + tile : 3, x : x + tile : 3]
            assert np.array_equal(shown, hwc(colorize(mask, 3))), (png, row)
    with Image.open(folder / "evolution.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (grid_width(tile), grid.shape[0])

    # W&B offline run: images with both mask layers per val epoch, their files, and the metrics.
    (offline,) = (run / "wandb").glob("offline-run-*")
    records = wandb_records(next(offline.glob("*.wandb")))
    rows = history_rows(records)
    pictured = [row for row in rows if "val/predictions/_type" in row]
    assert [row["epoch"] for row in pictured] == [0, 1]
    for row in pictured:
        assert row["val/predictions/count"] == 2
        assert row["val/predictions/captions"] == [f"val[{i}] epoch {row['epoch']}" for i in (0, 1)]
        layers = row["val/predictions/all_masks"]
        assert len(layers) == 2 and all(set(m) == set(LAYERS) for m in layers)
        for i, layer in enumerate(layers):
            truth = np.asarray(Image.open(offline / "files" / layer["ground_truth"]["path"]))
            assert np.array_equal(truth, val_masks[i])
            pred = np.asarray(Image.open(offline / "files" / layer["predictions"]["path"]))
            assert pred.shape == (32, 32) and set(np.unique(pred)) <= {0, 1, 2}
        for name in row["val/predictions/filenames"]:
            assert (offline / "files" / name).is_file()
    wandb_config = [
        json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
        if u.key == "_wandb"
    ][-1]
    labels = wandb_config["mask/class_labels"]
    assert sorted(labels) == [f"val/predictions_wandb_delimeter_{k}" for k in LAYERS]
    assert all(
        v["value"] == {"0": "pet", "1": "background", "2": "border"} for v in labels.values()
    )
    mious = [row["val/miou"] for row in rows if "val/miou" in row]
    assert len(mious) == 2 and all(0.0 <= m <= 1.0 for m in mious)
    # Each epoch's pictures and confusion matrix at the step of its scores.
    steps = [row["trainer/global_step"] for row in rows if "val/miou" in row]
    assert [row["trainer/global_step"] for row in pictured] == steps
    confusion = [row["trainer/global_step"] for row in rows if "val/confusion/_type" in row]
    assert confusion == steps
    bests = [
        (row["val/miou_best"], row["val/miou_best_epoch"]) for row in rows if "val/miou" in row
    ]
    assert bests[-1] == (max(mious), mious.index(max(mious)))
    assert mious[-1] == pytest.approx(metrics["val/miou"])


def test_callback_skips_sanity_check_and_follows_every_n_epochs(tmp_path: Path) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from petseg.module import SegModule

    torch.manual_seed(0)
    module = SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    items = [
        {"image": torch.rand(3, 16, 16), "mask": torch.randint(0, 3, (16, 16))} for _ in range(3)
    ]
    loader = DataLoader(items, batch_size=3)  # no datamodule: the val loader's dataset is used
    callback = PredictionImages(num_images=2, every_n_epochs=2)
    calls = []
    predict = callback._predict
    callback._predict = lambda *args: calls.append(1) or predict(*args)  # type: ignore[method-assign]
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(module, loader, loader)
    # Epochs 0 and 2 by every_n_epochs, 3 as the last; none for the sanity check.
    assert len(calls) == 3 and sorted(callback.frames) == [0, 2, 3]
    names = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert names == ["epoch_000.png", "epoch_002.png", "epoch_003.png", "evolution.gif"]
    with Image.open(tmp_path / "predictions" / "epoch_000.png") as grid:
        tile = 16 * tile_scale(16, 16)
        assert grid.size == (grid_width(tile), 2 * LINE + 2 * (tile + GAP) + GAP + LINE)


def spy_wandb(tmp_path: Path):
    """A WandbLogger that records (keys, step) of every log_metrics call and sends nothing."""
    from lightning.pytorch.loggers import WandbLogger

    class SpyWandb(WandbLogger):
        def __init__(self) -> None:
            super().__init__(save_dir=tmp_path, offline=True)
            self.calls: list[tuple[set[str], int | None]] = []

        def log_metrics(self, metrics, step=None) -> None:
            self.calls.append((set(metrics), step))

        def log_hyperparams(self, params) -> None:
            pass

    return SpyWandb()


def step_of(calls: list[tuple[set[str], int | None]], key: str) -> list[int | None]:
    return [step for keys, step in calls if key in keys]


def test_pictures_go_to_wandb_at_the_step_of_their_scores(tmp_path: Path, monkeypatch) -> None:
    """Lightning logs epoch-end val scores one below trainer.global_step inside fit: pictures and
    the confusion table logged at global_step would sit one row after the scores they show."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from petseg.module import SegModule

    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.manual_seed(0)
    module = SegModule(
        net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    items = [{"image": torch.rand(3, 8, 8), "mask": torch.randint(0, 3, (8, 8))} for _ in range(6)]
    loader = DataLoader(items, batch_size=2)  # 3 steps per epoch
    spy = spy_wandb(tmp_path)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=spy,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[PredictionImages(num_images=2, gif=False)],
    )
    try:
        trainer.fit(module, loader, loader)
        trainer.test(module, loader, verbose=False)
    finally:
        import wandb

        wandb.finish()
    scores = step_of(spy.calls, "val/miou")
    assert scores == [2, 5]  # the epochs' last batches, 0-based, as Lightning counts them
    assert step_of(spy.calls, "val/predictions") == scores
    assert (
        step_of(spy.calls, "val/confusion") == step_of(spy.calls, "val/confusion_table") == scores
    )
    assert step_of(spy.calls, "test/confusion") == step_of(spy.calls, "test/miou") == [6]


@pytest.mark.realdata
def test_pictured_val_images_of_pets_mini_span_breeds_and_species(pets_mini: Path) -> None:
    from petseg.data.datamodule import PetDataModule

    _, val = PetDataModule(root=pets_mini, download=False).split_names()  # reads the lists only
    assert all(n.startswith("Abyssinian") for n in sorted(val)[:8])  # what "the first 8" showed
    chosen = [val[i] for i in spread_over_breeds(val, 8)]
    breeds = {n.rsplit("_", 1)[0] for n in chosen}
    assert len(chosen) == len(set(chosen)) == 8 and len(breeds) == 8
    assert {b[:1].isupper() for b in breeds} == {True, False}  # cats and dogs
    assert chosen == [val[i] for i in spread_over_breeds(val, 8)]  # seeded: every run the same


def test_spread_over_breeds_repeats_a_breed_only_when_it_must() -> None:
    names = ["Bengal_1", "Bengal_2", "Bengal_3", "pug_1"]
    chosen = [names[i] for i in spread_over_breeds(names, 3)]
    assert "pug_1" in chosen and len(set(chosen)) == 3
    assert sorted(spread_over_breeds(["synthetic_1", "synthetic_2"], 5)) == [0, 1]
