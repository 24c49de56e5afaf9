"""petseg.evaluate: a trained checkpoint re-tested gives the run's own test metrics; errors are
one line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from petseg.errors import ConfigError
from petseg.evaluate import evaluate
from petseg.train import train

from conftest import cli_config

ROOT = Path(__file__).resolve().parents[1]
DATA = [
    "data=synthetic",
    "data.synthetic.num_trainval=8",
    "data.synthetic.num_test=4",
    "data.synthetic.size=48",
    "data.image_size=32",
    "data.batch_size=3",  # 4 test images: the last batch is smaller
    "data.num_workers=0",
    "data.pin_memory=false",
]


def evaluate_config(tmp_path: Path, *overrides: str):
    cpu = ["trainer.accelerator=cpu", "trainer.devices=1"]
    return cli_config("evaluate", tmp_path, *cpu, *overrides)


def test_evaluate_reproduces_the_runs_test_metrics(cfg_factory, tmp_path: Path, one_thread) -> None:
    cfg = cfg_factory(*DATA, "model=segnet_dsc", "trainer.max_epochs=1")
    trained = train(cfg)
    run = Path(cfg.paths.output_dir)
    best = next((run / "checkpoints").glob("epoch*.ckpt"))
    test_keys = sorted(k for k in trained if k.startswith("test/"))
    assert {"test/miou", "test/soft_iou", "test/iou_border", "test/loss"} <= set(test_keys)
    with open(run / "csv" / "metrics.csv", newline="") as f:
        logged = next(r for r in csv.DictReader(f) if r["test/miou"])

    out = tmp_path / "report" / "eval.json"
    ecfg = evaluate_config(tmp_path, *DATA, f"ckpt_path={best}", f"output={out}")
    metrics = evaluate(ecfg)
    assert sorted(metrics) == test_keys
    for key in test_keys:
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6, nan_ok=True), key
        assert metrics[key] == pytest.approx(float(logged[key]), abs=1e-6, nan_ok=True), key

    for path in (tmp_path / "evaluate" / "metrics.json", out):
        saved = json.loads(path.read_text())
        assert sorted(saved) == test_keys
        assert all(
            (saved[k] is None and math.isnan(metrics[k])) or saved[k] == pytest.approx(metrics[k])
            for k in test_keys
        )
    assert (tmp_path / "evaluate" / "confusion" / "test_epoch000.csv").is_file()

    # The article's protocol on the same checkpoint adds article_iou (on augmented images).
    article = evaluate(
        evaluate_config(tmp_path, *DATA, f"ckpt_path={best}", "metrics.article_protocol=true")
    )
    assert 0.0 <= article["test/article_iou"] <= 1.0


def test_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*nope\.ckpt: no such file"):
        evaluate(evaluate_config(tmp_path, *DATA, f"ckpt_path={tmp_path}/nope.ckpt"))
    with pytest.raises(ConfigError, match=r"^ckpt_path is not set"):
        evaluate(evaluate_config(tmp_path, *DATA))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*bad\.ckpt: cannot load it"):
        evaluate(evaluate_config(tmp_path, *DATA, f"ckpt_path={bad}"))


def test_cli_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "petseg.evaluate", f"ckpt_path={tmp_path}/nope.ckpt"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt_path=" in errors[0] and "nope.ckpt" in errors[0]
    assert "Traceback" not in proc.stderr
