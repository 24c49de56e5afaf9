"""Draw report.png with matplotlib: val mIoU per epoch, best val mIoU vs parameters, a legend."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from petseg.report.jobs import JobRow, finite
from petseg.report.tables import common_overrides, si, varying

Style = dict[str, str]  # Line2D keywords: color, marker
LEGEND_ROWS = 30  # entries per legend column
LABEL_CHARS = 60  # a legend entry longer than this ends in "..."


def styles(rows: list[JobRow]) -> dict[str, Style]:
    """tab10 colours; the marker tells apart jobs whose colours repeat (more than 10 jobs)."""
    return {
        r.job: {"color": f"C{i % 10}", "marker": "osD"[i // 10 % 3]} for i, r in enumerate(rows)
    }


def empty(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_curves(ax: Axes, rows: list[JobRow], style: dict[str, Style]) -> None:
    """Val mIoU per epoch, one line per job (NaN epochs left out)."""
    ax.set(title="val mIoU per epoch", xlabel="epoch", ylabel="val mIoU")
    curves = [(r, [(e, v) for e, v in r.curve if math.isfinite(v)]) for r in rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return empty(ax, "no val/miou in any csv/metrics.csv")
    for row, curve in curves:
        epochs, values = zip(*curve, strict=True)
        ax.plot(epochs, values, lw=2, ms=5, **style[row.job])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(color="#e4e4e4")


def draw_scatter(ax: Axes, rows: list[JobRow], style: dict[str, Style]) -> None:
    """Best val mIoU vs parameters (log x), one labelled point per job."""
    ax.set(title="best val mIoU vs parameters", xlabel="parameters (log scale)")
    ax.set_ylabel("best val mIoU")
    points = [r for r in rows if finite(r.params) and r.params > 0 and finite(r.val_miou_best)]
    if not points:
        return empty(ax, "no job has both parameters and a val mIoU")
    for row in points:
        ax.plot(row.params, row.val_miou_best, ms=8, mec="black", ls="", **style[row.job])
        ax.annotate(
            f"{row.job} {row.model}/{row.loss}",
            (row.params, row.val_miou_best),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=9,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: si(value)))
    ax.margins(x=0.15, y=0.1)
    ax.grid(color="#e4e4e4")


def legend_text(row: JobRow, common: list[str]) -> str:
    extra = " ".join(varying(row, common))
    state = "" if row.status == "completed" else f" [{row.status}]"
    text = f"{row.job}: {row.model or '?'} / {row.loss or '?'} {extra}".rstrip() + state
    return textwrap.shorten(text, LABEL_CHARS, placeholder="...")


def draw_report(rows: list[JobRow], path: Path) -> Figure:
    """report.png: val mIoU per epoch (left), best val mIoU vs parameters (right), legend right."""
    fig = Figure(figsize=(16, 6), dpi=100, layout="constrained")  # no pyplot: no display needed
    curves, scatter = fig.subplots(1, 2)
    style = styles(rows)
    draw_curves(curves, rows, style)
    draw_scatter(scatter, rows, style)
    common = common_overrides(rows)
    handles = [Line2D([], [], label=legend_text(r, common), **style[r.job]) for r in rows]
    if handles:
        ncols = math.ceil(len(handles) / LEGEND_ROWS)
        fig.legend(handles=handles, loc="outside right upper", ncols=ncols, fontsize=9)
    fig.savefig(path)
    return fig
