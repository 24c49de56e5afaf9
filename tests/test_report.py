"""petseg.report: rows, table, CSV and plot from a hand-made sweep folder and a real multirun."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from petseg.report import draw_report, main, report
from petseg.report.jobs import collect

from conftest import run_module, run_train

TARGETS = {"segnet_dsc": "petseg.models.segnet.SegNet", "unet": "petseg.models.unet.UNet"}
LOSSES = {"ce": "petseg.losses.CrossEntropyLoss", "dice": "petseg.losses.DiceLoss"}


def fake_job(
    sweep: Path,
    name: str,
    model: str = "unet",
    loss: str = "ce",
    status: dict | None = None,
    curve: list[float] | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    """A job folder as petseg.train leaves it: .hydra/, status.json, csv/metrics.csv."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"model={model}", f"loss={loss}", *extra, "trainer.max_epochs=3"]
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(
        f"model:\n  _target_: {TARGETS[model]}\nloss:\n  _target_: {LOSSES[loss]}\n"
    )
    (job / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    choices:\n      model: {model}\n      loss: {loss}\n"
    )
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    if curve is not None:
        (job / "csv").mkdir()
        lines = ["epoch,step,train/loss_epoch,val/miou,val/pixel_acc"]
        lines += [f"{e},{e},1.0,{v},{v + 0.2}" for e, v in enumerate(curve)]
        (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return job


def completed(best: float, params: int = 1000) -> dict:
    metrics = {"val/miou_best": best, "model/params": params, "model/mult_adds": 5 * params}
    return {"status": "completed", "seconds": 12.5, "metrics": metrics}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 1000 and img.height >= 500, img.size
        img.verify()


def test_rows_sorted_by_best_val_miou_failed_last(tmp_path: Path, capsys) -> None:
    fake_job(tmp_path, "0", status=completed(0.5), curve=[0.3, 0.5, 0.4])
    failed = {"status": "failed", "seconds": 1.0, "error": "data.val_fraction must be in (0, 1)"}
    fake_job(tmp_path, "1", "segnet_dsc", status=failed, curve=[0.9])  # high, but failed
    fake_job(tmp_path, "2", "segnet_dsc", "dice", status=completed(0.7, 10**6), curve=[0.6, 0.7])
    fake_job(tmp_path, "10", status={"status": "interrupted", "seconds": 3.0}, curve=[0.2])

    assert main([str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [r["job"] for r in rows] == ["2", "0", "10", "1"]
    assert [r["status"] for r in rows] == ["completed", "completed", "interrupted", "failed"]
    assert rows[0]["model"] == "segnet_dsc" and rows[0]["model_class"] == "SegNet"
    assert rows[0]["loss"] == "dice" and rows[0]["loss_class"] == "DiceLoss"
    assert float(rows[0]["val_miou_best"]) == 0.7 and int(rows[0]["params"]) == 10**6
    assert float(rows[1]["val_pixel_acc"]) == pytest.approx(0.7)  # at the best epoch (1)
    assert rows[1]["epochs"] == "3" and rows[1]["seconds"] == "12.5"
    assert rows[2]["val_miou_best"] == "0.2"  # interrupted: from its CSV
    assert "val_fraction" in rows[3]["error"]

    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 5  # header + 4 jobs
    assert (
        lines[-1].startswith("| 1 | segnet_dsc (SegNet) |")
        and "failed: data.val_fraction" in lines[-1]
    )
    markdown = (tmp_path / "report.md").read_text()
    assert table.strip() in markdown and "4 jobs: 2 completed, 1 failed, 1 interrupted" in markdown
    assert_png(tmp_path / "report.png")


def test_long_error_is_shortened_in_the_table_only(tmp_path: Path) -> None:
    error = "RuntimeError('" + "x" * 400 + "')"
    fake_job(tmp_path, "0", status={"status": "failed", "error": error})
    report(tmp_path)
    line = (tmp_path / "report.md").read_text().splitlines()
    row = next(x for x in line if x.startswith("| 0 |"))
    assert "failed: RuntimeError('xxx" in row and row.endswith("... |") and len(row) < 250
    assert read_csv(tmp_path / "report.csv")[0]["error"] == error


def test_missing_empty_and_nan_pieces_are_tolerated(tmp_path: Path) -> None:
    fake_job(tmp_path, "0", status=completed(0.4))  # no csv/
    empty = fake_job(tmp_path, "1", status={"status": "running", "seconds": 0.1})
    (empty / "csv").mkdir()
    (empty / "csv" / "metrics.csv").write_text("")  # zero bytes
    nan = completed(float("nan"))
    fake_job(tmp_path, "2", status=nan, curve=[float("nan"), 0.3])
    fake_job(tmp_path, "5", status=nan)  # NaN and nothing else
    (tmp_path / "3").mkdir()  # Hydra made the folder, the job wrote nothing
    broken = fake_job(tmp_path, "4")
    (broken / "status.json").write_text("{not json")

    report(tmp_path)
    rows = {r["job"]: r for r in read_csv(tmp_path / "report.csv")}
    assert set(rows) == {"0", "1", "2", "3", "4", "5"}
    assert rows["0"]["epochs"] == "" and rows["0"]["val_miou_best"] == "0.4"
    assert rows["1"]["status"] == "running" and rows["1"]["val_miou_best"] == ""
    assert rows["2"]["val_miou_best"] == "0.3" and rows["2"]["epochs"] == "2"  # NaN: from csv
    assert rows["5"]["val_miou_best"] == "nan" and rows["5"]["val_pixel_acc"] == ""
    assert rows["3"]["status"] == "unknown" and rows["3"]["model"] == ""
    assert rows["4"]["status"] == "unknown" and "status.json" in rows["4"]["error"]
    order = [r["job"] for r in read_csv(tmp_path / "report.csv")]
    assert order == ["0", "2", "1", "3", "4", "5"]  # scored first, then by job
    assert "| nan |" in (tmp_path / "report.md").read_text()
    assert_png(tmp_path / "report.png")


def test_single_run_folder_and_out_dir(tmp_path: Path) -> None:
    run = fake_job(
        tmp_path / "outputs" / "2026-01-01", "12-00-00", status=completed(0.6), curve=[0.6]
    )
    out = tmp_path / "elsewhere" / "report"
    assert main([str(run), "--out", str(out)]) == 0
    assert [r["job"] for r in read_csv(out / "report.csv")] == ["12-00-00"]
    assert not (run / "report.md").exists()
    # A folder of single runs (outputs/<date>) works as a sweep.
    assert main([str(run.parent)]) == 0
    assert (run.parent / "report.png").is_file()


@pytest.mark.parametrize("make", ["empty", "missing", "sweeps"])
def test_no_jobs_is_one_error_line(tmp_path: Path, capsys, make: str) -> None:
    target = tmp_path / "multirun"
    if make != "missing":
        target.mkdir()
    if make == "sweeps":  # outputs/multirun/<date> instead of .../<date>/<time>
        fake_job(target / "12-00-00", "0", status=completed(0.5))
    assert main([str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0]
    if make == "sweeps":
        assert "12-00-00" in err[0]
    assert not (target / "report.md").exists()


def test_plot_has_both_panels_and_a_legend_of_the_jobs_outside_them(tmp_path: Path) -> None:
    """report.png through matplotlib: the legend sits right of both panels, not across them."""
    for i in range(12):  # more jobs than tab10 colours: markers tell them apart
        params = 1000 * 10 ** (i % 4)
        fake_job(tmp_path, str(i), status=completed(0.3 + i / 50, params), curve=[0.2, 0.3])
    fake_job(tmp_path, "running", status={"status": "running"})  # no curve, no point
    rows = collect(tmp_path)
    fig = draw_report(rows, tmp_path / "report.png")
    assert_png(tmp_path / "report.png")
    curves, scatter = fig.axes
    assert len(curves.get_lines()) == 12 and scatter.get_xscale() == "log"
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert [label.split(":")[0] for label in labels] == [r.job for r in rows]
    assert labels[-1] == "running: unet / ce [running]"
    markers = [line.get_marker() for line in legend.legend_handles]
    assert markers[:10] == ["o"] * 10 and markers[10:12] == ["s", "s"]
    left = legend.get_window_extent().x0  # pixels, as laid out by savefig
    assert all(left >= ax.get_window_extent().x1 for ax in fig.axes)


def test_plot_says_why_a_panel_is_empty(tmp_path: Path) -> None:
    fake_job(tmp_path, "0", status={"status": "failed", "error": "boom"})
    fig = draw_report(collect(tmp_path), tmp_path / "report.png")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == [
        "no val/miou in any csv/metrics.csv",
        "no job has both parameters and a val mIoU",
    ]
    assert_png(tmp_path / "report.png")


@pytest.mark.slow
def test_report_on_a_real_2x2_multirun(tmp_path: Path) -> None:
    train = [
        *("-m", "model=segnet_dsc,vit_small", "loss=ce,dice", "data=synthetic"),
        *("data.synthetic.num_trainval=8", "data.synthetic.num_test=4", "data.synthetic.size=48"),
        *("data.image_size=32", "data.num_workers=0", "trainer.max_epochs=2", "test=false"),
        f"paths.root_dir={tmp_path}",
    ]
    proc = run_train(*train, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    proc = run_module("petseg.report", str(sweep), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(sweep / "report.csv")
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert {(r["model"], r["loss"]) for r in rows} == {
        (m, loss) for m in ("segnet_dsc", "vit_small") for loss in ("ce", "dice")
    }
    for row in rows:
        assert row["status"] == "completed" and row["epochs"] == "2"
        assert 0 <= float(row["val_miou_best"]) <= 1 and 0 <= float(row["val_pixel_acc"]) <= 1
        assert int(row["params"]) > 1000 and int(row["mult_adds"]) > 0 and float(row["seconds"]) > 0
    mious = [float(r["val_miou_best"]) for r in rows]
    assert mious == sorted(mious, reverse=True)
    markdown = (sweep / "report.md").read_text()
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and all(line in markdown for line in table)
    for model, loss in (
        ("segnet_dsc (SegNet)", "ce (CrossEntropyLoss)"),
        ("vit_small (ViTSeg)", "dice (DiceLoss)"),
    ):
        assert any(f"| {model} | {loss} |" in line for line in table), table
    assert_png(sweep / "report.png")
