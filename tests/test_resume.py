"""A training process killed mid-epoch resumes to the same weights and one unbroken history."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "data=synthetic",
    "data.synthetic.num_trainval=60",
    "data.synthetic.num_test=2",
    "data.synthetic.size=64",
    "data.image_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "model=segnet_dsc",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "test=false",
    "seed=5",
]


def start(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    args = [*RUN, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "petseg.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_run_resumes_to_uninterrupted_weights(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    proc = start(tmp_path, reference)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]

    killed = tmp_path / "killed"
    proc = start(tmp_path, killed)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 1
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] != "completed", "the run finished before it could be killed"
    assert (killed / "checkpoints" / "interrupted.ckpt").is_file()  # the cut-short work is kept

    resumed = tmp_path / "resumed"
    proc = start(tmp_path, resumed, f"ckpt_path={last}")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert json.loads((resumed / "status.json").read_text())["status"] == "completed"

    ref, res = (
        weights(reference / "checkpoints" / "last.ckpt"),
        weights(resumed / "checkpoints" / "last.ckpt"),
    )
    assert ref.keys() == res.keys()
    for name in ref:
        torch.testing.assert_close(res[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)

    rows = history(resumed)
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/miou")]
    assert val_epochs == [0, 1, 2]
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)) == list(range(len(steps)))  # no gap, no duplicate
    assert len(steps) == len([r for r in history(reference) if r.get("train/loss")])
