"""petseg.bench on tiny settings (SegModule's speed switches it measures are tested in
test_module.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from test_module import ADAM, CE, TWO_CONV

from petseg import bench
from petseg.module import SegModule

from conftest import TINY, quiet_trainer


def positive_finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def cache_available() -> bool:
    try:
        from petseg.data.cache import ensure_cache  # noqa: F401
    except ImportError:
        return False
    return True


def fit(module: SegModule, steps: int = 2, size: int = 16, **trainer_args: object) -> L.Trainer:
    """`steps` training steps on random in-memory batches, nothing else."""
    torch.manual_seed(0)
    batches = [
        {"image": torch.rand(2, 3, size, size), "mask": torch.randint(0, 3, (2, size, size))}
        for _ in range(steps)
    ]
    trainer = quiet_trainer(None, max_steps=steps, limit_val_batches=0, **trainer_args)
    trainer.fit(module, train_dataloaders=bench.InMemory(batches))
    return trainer


# --- the bench -----------------------------------------------------------------------------------


def test_bench_tiny_run_writes_positive_figures(tmp_path: Path, one_thread) -> None:
    result = bench.run(
        overrides=["data.image_size=32"],
        models=["segnet_dsc"],
        batch=2,
        steps=2,
        warmup=1,
        rounds=1,
        precisions=["32"],
        samples=4,
        data="synthetic",
        skip=["onnx"],
        out=tmp_path,
    )
    written = json.loads((tmp_path / "latest.json").read_text())
    assert {"pipeline_cache_vs_decode", "step_lightning_vs_plain", "pipeline", "step"} <= set(
        written
    )
    assert positive_finite(written["step_lightning_vs_plain"])
    if cache_available():  # a cache that is there must be measured, not "n/a"
        assert positive_finite(written["pipeline_cache_vs_decode"]), written["pipeline"]["cache"]
    else:
        assert written["pipeline_cache_vs_decode"] is None
    assert positive_finite(written["pipeline"]["decode_samples_per_s"])
    step = written["step"]
    assert len(step["plain_step_s"]) == len(step["lightning_step_s"]) == 2  # rounds x steps
    for key in ("plain_images_per_s", "lightning_images_per_s", "ratio_median_step"):
        assert positive_finite(step[key]), key
    (row,) = written["models"]
    assert row["model"] == "segnet_dsc" and row["image_size"] == 32
    for key in ("images_per_s", "mult_adds_g", "tflops"):
        assert positive_finite(row[key]), key
    assert result["step"]["ratio"] == written["step_lightning_vs_plain"]
    table = (tmp_path / "latest.md").read_text()
    assert "| train step: Lightning / plain loop (images/s) |" in table
    assert "| segnet_dsc | 32 | 2 |" in table


def test_bench_rejects_unknown_names(tmp_path: Path) -> None:
    from petseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown.*nosuchnet"):
        bench.run(models=["nosuchnet"], out=tmp_path)
    with pytest.raises(ConfigError, match="--skip"):
        bench.run(skip=["everything"], out=tmp_path)


def test_lightning_timer_sees_every_step_after_warmup(one_thread) -> None:
    module = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM)
    batches = [
        {"image": torch.rand(2, 3, 16, 16), "mask": torch.randint(0, 3, (2, 16, 16))}
        for _ in range(5)
    ]
    twin = SegModule(net=TWO_CONV, loss=CE, optimizer=ADAM)
    cpu = torch.device("cpu")
    lightning = bench.lightning_step_seconds(module, batches, 2, "32", cpu)
    plain = bench.PlainLoop.of(twin, "bf16-mixed", cpu).seconds(batches, 2)
    paired = bench.paired_step_seconds(module, twin, batches, 3, "32", cpu)
    assert len(lightning) == len(plain) == 3 and [len(s) for s in paired] == [2, 2]
    assert all(positive_finite(s) for s in [*lightning, *plain, *paired[0], *paired[1]])


@pytest.mark.slow
def test_bench_onnx_row(tmp_path: Path, one_thread) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = bench.compose_run([*TINY])
    row = bench.bench_onnx(cfg, "segnet_dsc", tmp_path, runs=2)
    assert "error" not in row, row.get("error")
    assert positive_finite(row["eager_ms"]) and positive_finite(row["onnxruntime_ms"])
    assert row["max_abs_diff"] < 1e-3


def test_pipeline_reads_samples_with_one_thread_as_a_worker() -> None:
    """A DataLoader worker runs with one intra-op thread: the pipeline part reads so, and the
    process's own count is back after it."""
    from petseg.bench import pipeline

    class Counting:
        threads: list[int] = []

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            self.threads.append(torch.get_num_threads())
            return {}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rate, samples = pipeline.samples_per_s(Counting(), 4)  # type: ignore[arg-type]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert Counting.threads and set(Counting.threads) == {1} and len(samples) == 4 and rate > 0
