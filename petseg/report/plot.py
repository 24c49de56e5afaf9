"""Draw report.png with PIL: val mIoU per epoch, best val mIoU vs parameters, legend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from petseg.report.jobs import JobRow, finite
from petseg.report.tables import common_overrides, si, varying

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
