"""petseg.gpucheck: the CPU dry run composes and runs every stage; budgets skip, never fail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from petseg import gpucheck
from petseg.gpucheck import DRY, Sizes, augment_stats


def test_peak_table_and_tflops_formula() -> None:
    assert gpucheck.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpucheck.peak_bf16_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert gpucheck.peak_bf16_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert gpucheck.peak_bf16_tflops("NVIDIA L40S") == pytest.approx(362.1)
    assert gpucheck.peak_bf16_tflops("Some Future GPU") is None
    # 1 GMAC per image at 1,000 images/s: 6 TFLOP/s (2 FLOPs per MAC, ~3 forwards per step).
    assert gpucheck.achieved_tflops(10**9, 1000.0) == pytest.approx(6.0)


def test_augment_stats_sees_flips_and_jitter() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(8, 3, 6, 6, generator=gen)
    mask = torch.zeros(8, 6, 6, dtype=torch.long)
    mask[:, :, 0] = 1  # asymmetric: a flip shows
    flip = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    out = torch.where(flip.view(-1, 1, 1, 1), image.flip(-1), image).clone()
    out_mask = torch.where(flip.view(-1, 1, 1), mask.flip(-1), mask)
    out[:2] *= 0.5  # two jittered images (darker)
    stats = augment_stats(image, mask, out, out_mask)
    assert stats["flip_rate"] == pytest.approx(3 / 8)
    assert stats["jitter_rate"] == pytest.approx(2 / 8)
    assert stats["ratio_mean"] == pytest.approx((2 * 0.5 + 6) / 8, abs=1e-6)


def test_dataset_is_made_once_at_the_asked_size(tmp_path: Path) -> None:
    from PIL import Image

    sizes = Sizes(trainval=3, test=1, width=40, height=30)
    base, made = gpucheck.ensure_dataset(tmp_path, sizes)
    assert made
    assert len((base / "annotations" / "trainval.txt").read_text().split("\n")) == 4
    with Image.open(base / "images" / "gpucheck_1.jpg") as im:
        assert im.size == (40, 30)
    assert gpucheck.ensure_dataset(tmp_path, sizes) == (base, False)  # cached


def test_spent_budget_skips_every_stage_and_passes(tmp_path: Path) -> None:
    report = gpucheck.run_check(True, tmp_path / "out", tmp_path / "data", budget_s=0.0,
                                watchdog=False)  # fmt: skip
    data = json.loads((tmp_path / "out" / "dry-run.json").read_text())
    assert {s["status"] for s in data["stages"].values()} == {"skipped"}
    assert set(data["stages"]) == {name for name, _ in DRY.caps}
    assert data["ok"] and not report.failed
    assert "| data | skipped |" in (tmp_path / "out" / "dry-run.md").read_text()


@pytest.mark.slow
def test_dry_run_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    """The dry run (without the two `python -m petseg.train` subprocesses, which the GPU run
    starts too): every in-process stage completes and every check passes."""
    sizes = replace(DRY, subprocesses=False, augment_draws=128)
    report = gpucheck.run_check(True, tmp_path / "out", tmp_path / "data", budget_s=10_000,
                                sizes=sizes, watchdog=False)  # fmt: skip
    data = json.loads(report.json_path.read_text())
    assert {k: v["status"] for k, v in data["stages"].items()} == {
        name: "done" for name, _ in DRY.caps
    }, data["stages"]
    assert data["ok"], report.failed
    rows = {(r["model"], r["variant"]) for r in data["throughput"]}
    assert {(m, "eager") for m in gpucheck.MODELS} <= rows
    assert ("segnet_dsc", gpucheck.COMPILED) in rows
    assert [r["cache"] for r in data["epochs"]] == ["cold", "warm"]
    assert all(r["data_wait_frac"] is not None for r in data["throughput"])
    names = [c["name"] for c in data["checks"]]
    assert "fused Adam = unfused" in names
    assert "segnet_dsc: compiled = eager logits" in names
    assert any(n.startswith("data.gpu_augment = CPU path") for n in names)


def test_no_gpu_says_so_in_one_line_and_runs_the_dry_run(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen, real_run_check = {}, gpucheck.run_check

    def fake_run_check(dry_run: bool, out: Path, data_root, budget_s: float):
        seen["dry_run"] = dry_run  # no time left: every stage skipped, nothing runs
        return real_run_check(dry_run, out, tmp_path / "data", budget_s=0.0, watchdog=False)

    monkeypatch.setattr(gpucheck, "run_check", fake_run_check)
    assert gpucheck.main(["--out", str(tmp_path / "out")]) == 0
    assert seen["dry_run"] is True
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "gpu-check: no CUDA GPU on this machine; running the CPU dry run instead"
