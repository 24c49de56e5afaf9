"""SaveOnInterrupt: the cut-short work is kept on a crash or signal, never on a user error."""

from __future__ import annotations

from pathlib import Path

import pytest

from petseg.callbacks import SaveOnInterrupt
from petseg.errors import ConfigError, NonFiniteLossError
from petseg.run_status import Interrupted


class RecordingTrainer:
    def __init__(self) -> None:
        self.saved: list[Path] = []

    def save_checkpoint(self, path: Path) -> None:
        self.saved.append(path)


@pytest.mark.parametrize(
    ("error", "saves"),
    [
        (RuntimeError("a bug"), True),
        (KeyboardInterrupt(), True),
        (SystemExit(), True),  # Lightning's SIGTERMException
        (Interrupted(15), True),
        (ConfigError("model.num_classes=2 ..."), False),
        (NonFiniteLossError("train/loss is not finite"), False),
    ],
)
def test_saves_only_when_the_weights_are_worth_keeping(
    tmp_path: Path, error: BaseException, saves: bool
) -> None:
    trainer = RecordingTrainer()
    SaveOnInterrupt(tmp_path).on_exception(trainer, None, error)
    assert trainer.saved == ([tmp_path / "interrupted.ckpt"] if saves else [])
