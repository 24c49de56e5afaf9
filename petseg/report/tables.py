"""Write JobRow rows as report.md (Markdown table) and report.csv (plain values)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from petseg.report.jobs import STATUSES, JobRow, finite

ERROR_CHARS = 80  # error text in the Markdown table; report.csv keeps it whole


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
