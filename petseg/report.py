"""`python -m petseg.report <sweep folder> [--out DIR]`: compare the runs of a multirun sweep.

Reads each job's `status.json`, `.hydra/` and `csv/metrics.csv` (any of them may be missing) and
writes `report.md` and `report.csv` (one row per job, best val mIoU first, failed jobs last) and
`report.png` (val mIoU per epoch; best val mIoU vs parameters). PATH may also be a single run
folder or a folder holding several runs (`outputs/<date>`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from petseg.errors import PetsegError

STATUSES = ("completed", "failed", "interrupted", "running")
ERROR_CHARS = 80  # error text in the Markdown table; report.csv keeps it whole


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


# --- collect rows ---------------------------------------------------------------------------


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
    state = status.get("status")
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
    """Best val mIoU first; runs without one after; failed runs last."""
    miou = row.val_miou_best if finite(row.val_miou_best) else None
    return (row.status == "failed", miou is None, -(miou or 0.0), natural(row.job))


def collect(path: Path) -> list[JobRow]:
    return sorted((read_job(job) for job in find_jobs(path)), key=sort_key)


# --- table ----------------------------------------------------------------------------------


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def common_overrides(rows: list[JobRow]) -> list[str]:
    """Overrides every job shares (listed once above the table, not in each row)."""
    sets = [set(r.overrides) for r in rows if r.overrides]
    shared = set.intersection(*sets) if sets else set()
    return [o for o in (rows[0].overrides if rows else []) if o in shared]


def varying(row: JobRow, common: list[str]) -> list[str]:
    """This job's own overrides, without model=/loss= (they have their own columns)."""
    return [
        o for o in row.overrides if o not in common and override_key(o) not in ("model", "loss")
    ]


def named(choice: str, cls: str) -> str:
    """`segnet_dsc (SegNet)`; just one of them when they say the same."""
    if choice and cls and choice.replace("_", "").lower() != cls.lower():
        return f"{choice} ({cls})"
    return choice or cls or "?"


def si(value: float) -> str:
    """67363340 -> 67.4M (3 significant digits)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def fmt(value: float | None, style: str = ".4f") -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    if style == "si":
        return si(value)
    return format(int(value) if style == "," else value, style)


def status_cell(row: JobRow) -> str:
    if not row.error:
        return row.status
    text = row.error if len(row.error) <= ERROR_CHARS else row.error[: ERROR_CHARS - 3] + "..."
    return f"{row.status}: {text}"


def markdown_table(rows: list[JobRow]) -> str:
    """One line per job; test columns only when some job has test metrics."""
    common = common_overrides(rows)
    has_test = any(r.test_miou is not None or r.test_pixel_acc is not None for r in rows)
    columns: list[tuple[str, Any]] = [
        ("job", lambda r: r.job),
        ("model", lambda r: named(r.model, r.model_class)),
        ("loss", lambda r: named(r.loss, r.loss_class)),
        *(
            [("overrides", lambda r: " ".join(f"`{o}`" for o in varying(r, common)) or "-")]
            if any(varying(r, common) for r in rows)
            else []
        ),
        ("params", lambda r: fmt(r.params, ",")),
        ("mult-adds", lambda r: fmt(r.mult_adds, "si")),
        ("best val mIoU", lambda r: fmt(r.val_miou_best)),
        ("val acc", lambda r: fmt(r.val_pixel_acc)),
        *(
            [
                ("test mIoU", lambda r: fmt(r.test_miou)),
                ("test acc", lambda r: fmt(r.test_pixel_acc)),
            ]
            if has_test
            else []
        ),
        ("epochs", lambda r: fmt(r.epochs, "d")),
        ("time (s)", lambda r: fmt(r.seconds, ".1f")),
        ("status", status_cell),
    ]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = (str(get(row)).replace("|", "\\|") for _, get in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(rows: list[JobRow], source: Path, path: Path) -> None:
    counts = {s: sum(r.status == s for r in rows) for s in (*STATUSES, "unknown")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    common = common_overrides(rows)
    text = [
        f"# Report: {source}",
        "",
        f"{len(rows)} jobs: {summary}.",
        "",
        *(
            [f"Overrides common to all jobs: {' '.join(f'`{o}`' for o in common)}", ""]
            if common
            else []
        ),
        markdown_table(rows),
        "",
        "best val mIoU: the best checkpoint's `val/miou`; val acc: `val/pixel_acc` at that epoch; "
        "test: the best checkpoint on the test split; time: wall-clock seconds of the job.",
        "",
        "![val mIoU per epoch; best val mIoU vs parameters](report.png)",
        "",
    ]
    path.write_text("\n".join(text))


CSV_COLUMNS = (
    "job", "model", "model_class", "loss", "loss_class", "overrides", "params", "mult_adds",
    "val_miou_best", "val_pixel_acc", "test_miou", "test_pixel_acc", "epochs", "seconds",
    "status", "error",
)  # fmt: skip


def write_csv(rows: list[JobRow], path: Path) -> None:
    """Plain values: empty = not recorded, `nan` = recorded as NaN; overrides space-separated."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            values = {**vars(row), "overrides": " ".join(row.overrides)}
            for key in ("params", "mult_adds"):
                if finite(values[key]):
                    values[key] = int(values[key])
            writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])


# --- plot -----------------------------------------------------------------------------------

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
PANEL = (700, 540)  # width, height of each of the two panels
PLOT = (90, 60, 30, 80)  # plot area inset in a panel: left, top, right, bottom
LEGEND = (3, 24)  # columns, row height


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


@dataclass
class Axis:
    """Maps data [lo, hi] onto pixels [p0, p1] (log10 when `log`)."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    def __call__(self, value: float) -> float:
        f = math.log10 if self.log else float
        return self.p0 + (f(value) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.p1 - self.p0)


def nice_ticks(lo: float, hi: float, count: int = 6, integer: bool = False) -> list[float]:
    """Round ticks covering [lo, hi]; the first and last are the axis limits."""
    raw = max(hi - lo, 1e-9) / count
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw)
    step = max(step, 1) if integer else step
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, max(last, first + 1) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks (decades only over a wide range) bracketing [lo, hi]."""
    d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if d1 - d0 <= 3 else (1,)
    ticks = [m * 10.0**d for d in range(d0, d1 + 1) for m in mults]
    start = max(i for i, t in enumerate(ticks) if t <= lo)
    end = min(i for i, t in enumerate(ticks) if t >= hi)
    return ticks[start : max(end, start + 1) + 1]


def marker(
    draw: ImageDraw.ImageDraw,
    at: tuple[float, float],
    r: float,
    style: tuple[str, int],
    outline: str | None = None,
) -> None:
    """Circle, square or diamond: the shape tells apart jobs whose colours repeat (>10 jobs)."""
    (x, y), (color, shape) = at, style
    if shape == 0:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=outline)
    elif shape == 1:
        draw.rectangle((x - r, y - r, x + r, y + r), fill=color, outline=outline)
    else:
        diamond = [(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)]
        draw.polygon(diamond, fill=color, outline=outline)


def vertical_text(img: Image.Image, center: tuple[float, float], text: str, size: int) -> None:
    left, top, right, bottom = font(size).getbbox(text)
    tile = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((2 - left, 2 - top), text, font=font(size), fill="black")
    tile = tile.rotate(90, expand=True)
    img.paste(tile, (int(center[0] - tile.width / 2), int(center[1] - tile.height / 2)), tile)


def draw_axes(
    img: Image.Image,
    box: tuple[int, int, int, int],
    ticks: tuple[list[float], list[float]],
    axes: tuple[Axis, Axis],
    labels: tuple[str, str, str],
    xfmt: Any = str,
) -> None:
    """Frame, grid, tick labels, title and axis labels of one panel."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    for t in ticks[1]:
        y = axes[1](t)
        draw.line([(x0, y), (x1, y)], fill="#e4e4e4")
        draw.text((x0 - 8, y), f"{t:g}", font=font(14), fill="black", anchor="rm")
    for t in ticks[0]:
        x = axes[0](t)
        draw.line([(x, y0), (x, y1)], fill="#e4e4e4")
        draw.text((x, y1 + 8), xfmt(t), font=font(14), fill="black", anchor="mt")
    draw.rectangle(box, outline="black")
    title, xlabel, ylabel = labels
    draw.text(((x0 + x1) / 2, y0 - 30), title, font=font(20), fill="black", anchor="mm")
    draw.text(((x0 + x1) / 2, y1 + 36), xlabel, font=font(16), fill="black", anchor="mt")
    vertical_text(img, (x0 - 65, (y0 + y1) / 2), ylabel, 16)


def panel_box(index: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = PLOT
    return (index * PANEL[0] + left, top, (index + 1) * PANEL[0] - right, PANEL[1] - bottom)


def empty_panel(img: Image.Image, box: tuple[int, int, int, int], title: str, why: str) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle(box, outline="black")
    center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    draw.text(center, why, font=font(16), fill="#666666", anchor="mm")
    draw.text((center[0], box[1] - 30), title, font=font(20), fill="black", anchor="mm")


def value_ticks(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.05, 0.01)
    return nice_ticks(lo - pad, hi + pad)


def draw_curves(img: Image.Image, rows: list[JobRow], styles: dict[str, tuple[str, int]]) -> None:
    """Left panel: val mIoU per epoch, one line per job (NaN epochs left out)."""
    box, title = panel_box(0), "val mIoU per epoch"
    curves = [(r, [(e, v) for e, v in r.curve if math.isfinite(v)]) for r in rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        empty_panel(img, box, title, "no val/miou in any csv/metrics.csv")
        return
    xt = nice_ticks(0, max(1, max(e for _, c in curves for e, _ in c)), integer=True)
    yt = value_ticks([v for _, c in curves for _, v in c])
    axes = (Axis(xt[0], xt[-1], box[0], box[2]), Axis(yt[0], yt[-1], box[3], box[1]))
    draw_axes(img, box, (xt, yt), axes, (title, "epoch", "val mIoU"), lambda t: f"{t:g}")
    draw = ImageDraw.Draw(img)
    for row, curve in curves:
        points = [(axes[0](e), axes[1](v)) for e, v in curve]
        if len(points) > 1:
            draw.line(points, fill=styles[row.job][0], width=3, joint="curve")
        for x, y in points:
            marker(draw, (x, y), 4, styles[row.job])


def place_label(
    size: tuple[float, float], at: tuple[float, float], box: tuple, taken: list[tuple]
) -> tuple[float, float, float, float]:
    """A label box beside a point, inside the plot and clear of earlier labels when possible."""
    (w, h), (x, y) = size, at
    options = [
        (x + dx, y - h / 2 + dy)
        for dy in (0, -h, h, -2 * h, 2 * h, -3 * h, 3 * h)
        for dx in (8, -8 - w)
    ]
    boxes = [(left, top, left + w, top + h) for left, top in options]
    inside = [
        b for b in boxes if b[0] >= box[0] and b[2] <= box[2] and b[1] >= box[1] and b[3] <= box[3]
    ]
    clear = [b for b in inside if not any(overlaps(b, t) for t in taken)]
    return (clear or inside or boxes)[0]


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_scatter(img: Image.Image, rows: list[JobRow], styles: dict[str, tuple[str, int]]) -> None:
    """Right panel: best val mIoU vs parameters (log x), one labelled point per job."""
    box, title = panel_box(1), "best val mIoU vs parameters"
    points = [r for r in rows if finite(r.params) and r.params > 0 and finite(r.val_miou_best)]
    if not points:
        empty_panel(img, box, title, "no job has both parameters and a val mIoU")
        return
    params = [r.params for r in points]
    xt = log_ticks(min(params) / 1.3, max(params) * 1.3)
    yt = value_ticks([r.val_miou_best for r in points])
    axes = (Axis(xt[0], xt[-1], box[0], box[2], log=True), Axis(yt[0], yt[-1], box[3], box[1]))
    draw_axes(img, box, (xt, yt), axes, (title, "parameters (log scale)", "best val mIoU"), si)
    draw = ImageDraw.Draw(img)
    taken: list[tuple] = []
    for row in sorted(points, key=lambda r: -r.val_miou_best):
        x, y = axes[0](row.params), axes[1](row.val_miou_best)
        marker(draw, (x, y), 6, styles[row.job], outline="black")
        text = f"{row.job} {row.model}/{row.loss}"
        spot = place_label(
            (font(14).getlength(text), 18), (x, y), box, [*taken, (x - 6, y - 6, x + 6, y + 6)]
        )
        taken.append(spot)
        draw.text((spot[0], spot[1] + 9), text, font=font(14), fill="black", anchor="lm")


def legend_text(row: JobRow, common: list[str]) -> str:
    extra = " ".join(varying(row, common))
    state = "" if row.status == "completed" else f" [{row.status}]"
    return f"{row.job}: {row.model or '?'} / {row.loss or '?'} {extra}".rstrip() + state


def draw_legend(img: Image.Image, rows: list[JobRow], styles: dict[str, tuple[str, int]]) -> None:
    """Job colours for both panels, below them, in columns."""
    draw, common = ImageDraw.Draw(img), common_overrides(rows)
    width = img.width // LEGEND[0]
    for i, row in enumerate(rows):
        x = 20 + (i % LEGEND[0]) * width
        y = PANEL[1] + (i // LEGEND[0]) * LEGEND[1]
        draw.line([(x, y + 9), (x + 28, y + 9)], fill=styles[row.job][0], width=3)
        marker(draw, (x + 14, y + 9), 5, styles[row.job])
        text = legend_text(row, common)
        while len(text) > 4 and font(14).getlength(text) > width - 50:
            text = text[:-4] + "..."
        draw.text((x + 36, y + 9), text, font=font(14), fill="black", anchor="lm")


def draw_report(rows: list[JobRow], path: Path) -> None:
    """report.png: val mIoU per epoch (left), best val mIoU vs parameters (right), legend."""
    legend_rows = math.ceil(len(rows) / LEGEND[0])
    img = Image.new("RGB", (2 * PANEL[0], PANEL[1] + legend_rows * LEGEND[1] + 16), "white")
    n = len(PALETTE)
    styles = {row.job: (PALETTE[i % n], i // n % 3) for i, row in enumerate(rows)}
    draw_curves(img, rows, styles)
    draw_scatter(img, rows, styles)
    draw_legend(img, rows, styles)
    img.save(path)


# --- CLI ------------------------------------------------------------------------------------


def report(path: Path, out: Path | None = None) -> list[JobRow]:
    """Write report.md, report.csv and report.png for the runs under `path` into `out` (or path)."""
    rows = collect(path)
    out = out or path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PetsegError(
            f"--out {out}: cannot create it ({e.strerror}); pass a writable folder"
        ) from None
    write_markdown(rows, path, out / "report.md")
    write_csv(rows, out / "report.csv")
    draw_report(rows, out / "report.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m petseg.report",
        description="Compare the runs of a sweep: report.md, report.csv, report.png.",
    )
    parser.add_argument(
        "path", type=Path, help="outputs/multirun/<date>/<time>, a run folder, or a folder of runs"
    )
    parser.add_argument("--out", type=Path, help="folder for report.{md,csv,png} (default: PATH)")
    args = parser.parse_args(argv)
    try:
        rows = report(args.path, args.out)
    except PetsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print(f"Wrote report.md, report.csv, report.png to {args.out or args.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
