"""How a run ends is recorded truthfully; `ckpt_path=last` resumes to the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from petseg.report.jobs import read_job
from petseg.run_status import StatusFile, effective_status, read_status

from conftest import ROOT, TINY, compose_config, quiet_trainer

RUN = [
    "data=synthetic",
    "data.synthetic.num_trainval=24",
    "data.synthetic.num_test=2",
    "data.synthetic.size=32",
    "data.image_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "model=segnet_dsc",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.precision=32-true",
    "callbacks.prediction_images=null",
    "logger=csv",
    "seed=5",
]
# 24 images, 10% val: 22 train / batch 2 = 11 steps per epoch; step 15 is mid-epoch 1.
MID_EPOCH_1 = 15


class SignalAt(L.Callback):
    """Sends this process `signum` after training step `step`, as `timeout` or Ctrl-C would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def signal_at(step: int, signum: int) -> list[str]:
    """Overrides adding SignalAt: the kill lands at one known step, whatever the machine's load."""
    return [
        "+callbacks.signal._target_=test_resume.SignalAt",
        f"+callbacks.signal.step={step}",
        f"+callbacks.signal.signum={int(signum)}",
    ]


def train_process(
    tmp_path: Path, run_dir: Path, *extra: str, epochs: int = 3
) -> subprocess.CompletedProcess:
    """`python -m petseg.train` in its own folder; the tests folder is importable for SignalAt."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    args = [*RUN, f"trainer.max_epochs={epochs}", f"paths.root_dir={tmp_path}"]
    args += [f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(
        [sys.executable, "-m", "petseg.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard only: each run takes well under a minute idle
    )


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_sigterm_is_recorded_and_last_resumes_to_uninterrupted_weights(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    done = train_process(tmp_path, reference)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "outputs" / "killed"  # under paths.log_dir, where ckpt_path=last looks
    stopped = train_process(tmp_path, killed, *signal_at(MID_EPOCH_1, signal.SIGTERM))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    status = read_status(killed)
    assert status["status"] == "interrupted" and status["error"] == "SIGTERM"
    assert status["exit_code"] == 143 and "metrics" not in status
    assert "test/miou" not in (killed / "csv" / "metrics.csv").read_text()  # no test after it
    cut = torch.load(killed / "checkpoints" / "interrupted.ckpt", weights_only=False)
    assert cut["global_step"] == MID_EPOCH_1  # the cut-short work is kept
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0

    resumed = tmp_path / "resumed"
    done = train_process(tmp_path, resumed, "ckpt_path=last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from {killed / 'checkpoints' / 'last.ckpt'}" in done.stdout + done.stderr
    assert read_status(resumed)["status"] == "completed"

    ref, res = (weights(d / "checkpoints" / "last.ckpt") for d in (reference, resumed))
    assert ref.keys() == res.keys()
    for name in ref:
        assert torch.equal(res[name], ref[name]), name  # max abs diff 0


@pytest.mark.slow
def test_ctrl_c_exits_130_and_is_recorded_as_interrupted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    stopped = train_process(tmp_path, run, *signal_at(3, signal.SIGINT), epochs=1)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    status = read_status(run)
    assert (status["status"], status["error"], status["exit_code"]) == (
        "interrupted",
        "SIGINT",
        130,
    )
    assert "Traceback" not in stopped.stderr


@pytest.mark.slow
def test_kill_9_is_recognisable_and_its_temp_file_cleaned_on_resume(tmp_path: Path) -> None:
    killed = tmp_path / "outputs" / "killed"
    gone = train_process(tmp_path, killed, *signal_at(MID_EPOCH_1, signal.SIGKILL))
    assert gone.returncode == -signal.SIGKILL
    status = read_status(killed)
    assert status["status"] == "running" and isinstance(status["pid"], int)
    assert effective_status(status) == "killed"
    assert read_job(killed).status == "killed"  # what `python -m petseg.report` shows
    torn = killed / "checkpoints" / ".last.ckpt.abc123.tmp"  # as a kill mid-save leaves it
    torn.write_bytes(b"\0" * 1000)

    resumed = tmp_path / "resumed"
    done = train_process(tmp_path, resumed, "ckpt_path=last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not torn.exists()


def test_a_live_run_is_not_resumed_from(tmp_path: Path, cfg_factory) -> None:
    from petseg.errors import ConfigError
    from petseg.train import resolve_resume

    live = tmp_path / "outputs" / "live"
    (live / "checkpoints").mkdir(parents=True)
    (live / "checkpoints" / "last.ckpt").write_bytes(b"x")
    StatusFile(live).write("running")  # this very process: alive
    with pytest.raises(ConfigError, match=r"still running \(pid \d+"):
        resolve_resume(cfg_factory("ckpt_path=last"))


class FakeMiou(L.LightningModule):
    """Logs a val/miou chosen per epoch, so the checkpoint callbacks see a dip."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/miou", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_ckpt_holds_the_newest_epoch_when_val_miou_falls(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"])
    callbacks = [
        instantiate(cfg.callbacks[name]) for name in ("model_checkpoint", "last_checkpoint")
    ]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), 2)
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(FakeMiou([0.5, 0.8, 0.3]), data, data)  # best at epoch 1, falls in epoch 2
    folder = tmp_path / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert best["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["epoch001-miou0.8000.ckpt", "last.ckpt"]


def test_sigterm_in_process_finishes_wandb_with_its_exit_code(cfg_factory, monkeypatch) -> None:
    import wandb

    from petseg.run_status import Interrupted
    from petseg.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    finished: list[int] = []
    real_finish = wandb.finish

    def spy(*args, exit_code: int | None = None, **kwargs) -> None:
        finished.append(exit_code)
        real_finish(*args, exit_code=exit_code, **kwargs)

    monkeypatch.setattr(wandb, "finish", spy)
    cfg = cfg_factory(*TINY, "trainer.max_epochs=2", *signal_at(2, signal.SIGTERM))
    with pytest.raises(Interrupted) as stop:
        train(cfg)
    assert (stop.value.name, stop.value.code) == ("SIGTERM", 143)
    assert finished == [143] and wandb.run is None  # W&B: finished, exit code 143
    assert read_status(cfg.paths.output_dir)["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_sigterm_before_fit_is_an_interrupt_not_a_silent_death(cfg_factory, monkeypatch) -> None:
    import petseg.train
    from petseg.run_status import Interrupted

    def stats_then_sigterm(*args, **kwargs):  # e.g. while the decoded cache builds
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(petseg.train, "model_stats", stats_then_sigterm)
    cfg = cfg_factory(*TINY, "trainer.max_epochs=1")
    with pytest.raises(Interrupted, match="SIGTERM"):
        petseg.train.train(cfg)
    status = read_status(cfg.paths.output_dir)
    assert (status["status"], status["exit_code"]) == ("interrupted", 143)
