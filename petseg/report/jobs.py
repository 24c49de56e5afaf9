"""Read Hydra run folders (status.json, .hydra/, csv/) into JobRow rows, best val mIoU first."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from petseg.errors import PetsegError
from petseg.run_status import effective_status

STATUSES = ("completed", "failed", "interrupted", "killed", "running")


@dataclass
class JobRow:
    """One run as the report shows it; None = not recorded (NaN stays NaN)."""

    job: str
    status: str = "unknown"
    model: str = ""  # Hydra choice (`segnet_dsc`), else the class name
    model_class: str = ""
    loss: str = ""
    loss_class: str = ""
    overrides: list[str] = field(default_factory=list)
    params: float | None = None
    mult_adds: float | None = None
    val_miou_best: float | None = None
    val_pixel_acc: float | None = None  # at the best val mIoU epoch when the CSV has it
    test_miou: float | None = None
    test_pixel_acc: float | None = None
    epochs: int | None = None
    seconds: float | None = None
    error: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/miou)


def is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra", "status.json", "csv"))


def natural(name: str) -> list[tuple[int, Any]]:
    """Sort key so job 10 comes after job 9."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


def find_jobs(path: Path) -> list[Path]:
    """The run folders under PATH: PATH itself, or its subfolders (Hydra's numbered job folders)."""
    if not path.is_dir():
        raise PetsegError(f"{path}: no such folder; pass outputs/multirun/<date>/<time> or a run")
    if is_run(path):
        return [path]
    subs = [p for p in path.iterdir() if p.is_dir()]
    jobs = [p for p in subs if is_run(p) or p.name.isdigit()]
    if jobs:
        return sorted(jobs, key=lambda p: natural(p.name))
    below = [p for p in (*path.glob("*/*/"), *path.glob("*/*/*/")) if is_run(p)]
    hint = (
        f"runs lie deeper, the newest in {max(p.parent for p in below)}"
        if below
        else "no run folders"
    )
    raise PetsegError(
        f"{path}: no jobs found ({hint}); pass a sweep folder outputs/multirun/<date>/<time>, "
        "a run folder (with .hydra/ or status.json) or a folder of runs"
    )


def read_yaml(path: Path) -> Any:
    """A YAML file as plain containers, unresolved; None when missing or unreadable."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # missing, not YAML, or a scalar at top level
        return None


def dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def read_status(job: Path) -> dict[str, Any]:
    try:
        data = json.loads((job / "status.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        return {"error": f"status.json unreadable ({type(e).__name__})"}
    return data if isinstance(data, dict) else {}


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """Lightning's metrics.csv as rows of the numeric cells only; [] when missing or empty."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [{k: x for k, v in r.items() if k and (x := number(v)) is not None} for r in rows]


def val_curve(rows: list[dict[str, float]]) -> list[tuple[int, float]]:
    """(epoch, val/miou) per epoch; a resumed run's repeated epoch keeps its last value."""
    by_epoch = {int(r["epoch"]): r["val/miou"] for r in rows if "val/miou" in r and "epoch" in r}
    return sorted(by_epoch.items())


def model_and_loss(job: Path) -> dict[str, str]:
    """Hydra choices (`segnet_dsc`, `ce`) and `_target_` class names from `.hydra/`."""
    config = read_yaml(job / ".hydra" / "config.yaml")
    choices = dig(read_yaml(job / ".hydra" / "hydra.yaml"), "hydra", "runtime", "choices") or {}
    out = {}
    for group in ("model", "loss"):
        target = dig(config, group, "_target_")
        out[f"{group}_class"] = target.rsplit(".", 1)[-1] if isinstance(target, str) else ""
        out[group] = str(choices.get(group) or out[f"{group}_class"])
    return out


def read_job(job: Path) -> JobRow:
    """Everything the report shows about one run folder, from whatever it holds."""
    status = read_status(job)
    metrics = status.get("metrics") if isinstance(status.get("metrics"), dict) else {}
    stats = read_yaml(job / "csv" / "hparams.yaml") or {}  # model/params also for failed runs
    rows = read_metrics_csv(job / "csv" / "metrics.csv")
    curve = val_curve(rows)
    scored = [r for r in rows if finite(r.get("val/miou"))]
    best = max(scored, key=lambda r: r["val/miou"]) if scored else {}
    trained = {"val/miou", "train/loss_epoch"}  # epoch-end keys; test rows do not count
    epochs = {int(r["epoch"]) for r in rows if "epoch" in r and trained & r.keys()}
    state = effective_status(status) if "status" in status else None
    overrides = read_yaml(job / ".hydra" / "overrides.yaml")

    def pick(*values: Any) -> float | None:
        """The first finite value, else the first number (NaN), else None."""
        numbers = [x for v in values if (x := number(v)) is not None]
        return next((x for x in numbers if math.isfinite(x)), numbers[0] if numbers else None)

    return JobRow(
        job=job.name,
        status=state if state in STATUSES else "unknown",
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        params=pick(metrics.get("model/params"), dig(stats, "model/params")),
        mult_adds=pick(metrics.get("model/mult_adds"), dig(stats, "model/mult_adds")),
        val_miou_best=pick(
            metrics.get("val/miou_best"), best.get("val/miou"), metrics.get("val/miou")
        ),
        val_pixel_acc=pick(best.get("val/pixel_acc"), metrics.get("val/pixel_acc")),
        test_miou=pick(metrics.get("test/miou")),
        test_pixel_acc=pick(metrics.get("test/pixel_acc")),
        epochs=len(epochs) if epochs else None,
        seconds=pick(status.get("seconds")),
        error=" ".join(str(status.get("error") or "").split()),
        curve=curve,
        **model_and_loss(job),
    )


def sort_key(row: JobRow) -> tuple[bool, bool, float, list[tuple[int, Any]]]:
    """Best val mIoU first; runs without one after; failed and killed runs last."""
    miou = row.val_miou_best if finite(row.val_miou_best) else None
    return (row.status in ("failed", "killed"), miou is None, -(miou or 0.0), natural(row.job))


def collect(path: Path) -> list[JobRow]:
    return sorted((read_job(job) for job in find_jobs(path)), key=sort_key)
