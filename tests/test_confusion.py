"""petseg.confusion: the table's rows, and the heatmap and CSV written beside each other."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image

from petseg.confusion import confusion_figure, confusion_table, save_confusion

NAMES = ["pet", "background", "border"]
CM = torch.tensor([[3, 1, 0], [1, 11, 0], [0, 0, 0]])  # rows target, cols pred


def test_confusion_table_rows_per_target_class() -> None:
    columns, table = confusion_table(CM, NAMES)
    assert columns == ["target", "pred_pet", "pred_background", "pred_border", "total"]
    assert table == [["pet", 3, 1, 0, 4], ["background", 1, 11, 0, 12], ["border", 0, 0, 0, 0]]


def test_heatmap_cells_hold_count_and_row_share() -> None:
    ax = confusion_figure(CM, NAMES, title="val").axes[0]
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert cells[(0, 0)] == "3\n75.0%" and cells[(1, 1)] == "11\n91.7%"
    assert cells[(2, 2)] == "0\n0.0%"  # a class never in the target: no division by zero
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES


def test_save_confusion_writes_png_and_csv(tmp_path: Path) -> None:
    png, table = save_confusion(CM, NAMES, tmp_path / "confusion", "val_epoch003")
    assert png == tmp_path / "confusion" / "val_epoch003.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 200
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1] == ["pet", "3", "1", "0", "4"]
