"""The confusion matrix (rows target, columns prediction) as a table, a CSV and a heatmap PNG."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure

from petseg.media import log_to_wandb, wandb_loggers


def confusion_table(
    confmat: torch.Tensor, class_names: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the confusion matrix: one row per target class, counts per prediction."""
    counts = confmat.detach().cpu().long().tolist()
    columns = ["target", *(f"pred_{name}" for name in class_names), "total"]
    rows = [[name, *row, sum(row)] for name, row in zip(class_names, counts, strict=True)]
    return columns, rows


def confusion_figure(confmat: torch.Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A heatmap coloured by the row-normalised value (recall per target class), each cell
    annotated with its count and percentage."""
    cm = confmat.detach().cpu().double()
    fractions = (cm / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
    n = len(class_names)
    fig = Figure(figsize=(1.6 + 1.3 * n, 1.2 + 1.1 * n), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the target class")
    ax.set(title=title, xlabel="predicted", ylabel="target", xticks=range(n), yticks=range(n))
    ax.set_xticklabels(class_names)
    ax.set_yticklabels(class_names)
    for i in range(n):
        for j in range(n):
            ink = "white" if fractions[i, j] > 0.5 else "black"
            text = f"{int(cm[i, j])}\n{100 * fractions[i, j]:.1f}%"
            ax.text(j, i, text, ha="center", va="center", color=ink, fontsize=9)
    return fig


def save_confusion(
    confmat: torch.Tensor, class_names: Sequence[str], folder: str | Path, name: str
) -> tuple[Path, Path]:
    """Write `<folder>/<name>.png` (heatmap) and `<folder>/<name>.csv` (counts); return both."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, table = folder / f"{name}.png", folder / f"{name}.csv"
    confusion_figure(confmat, class_names, title=name).savefig(png, dpi=100)
    columns, rows = confusion_table(confmat, class_names)
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return png, table


def report_confusion(
    trainer: L.Trainer, confmat: torch.Tensor, class_names: Sequence[str], name: str
) -> None:
    """A split's confusion matrix as `<run>/confusion/<name>.{png,csv}`, and to W&B if it logs
    (`<stage>/confusion`, `<stage>/confusion_table`); rank 0 only, never in a sanity check."""
    if trainer.sanity_checking or not trainer.is_global_zero:
        return
    folder = Path(trainer.default_root_dir) / "confusion"
    png, _ = save_confusion(confmat, class_names, folder, name)
    if wandb_loggers(trainer):
        import wandb

        stage = name.split("_", 1)[0]
        columns, rows = confusion_table(confmat, class_names)
        table = wandb.Table(columns=columns, data=rows)
        image = wandb.Image(str(png), caption=name)
        log_to_wandb(trainer, {f"{stage}/confusion_table": table, f"{stage}/confusion": image})
