"""What a run prints (the config tree, no unactionable noise); the console scripts complete."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from petseg.config import model_names
from petseg.console import config_tree, print_config, quiet_known_noise

from conftest import ROOT, compose_config, run_module


def test_config_tree_is_printed_and_saved(tmp_path: Path, capsys) -> None:
    cfg = compose_config(["model=vit_small", f"paths.output_dir={tmp_path}"])
    print_config(cfg, tmp_path / "config_tree.log")
    shown = capsys.readouterr().out
    saved = (tmp_path / "config_tree.log").read_text()
    for text in (shown, saved):
        assert "model" in text and "_target_: petseg.models.vit.ViTSeg" in text
    assert [str(b.label) for b in config_tree(cfg).children][:3] == ["data", "model", "loss"]
    assert "\x1b[" not in saved  # plain text on disk


def test_lightning_tip_and_leafspec_warning_are_filtered_nothing_else(caplog) -> None:
    quiet_known_noise()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try ...")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()  # after simplefilter, as a run installs it after the defaults
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1
        )
        warnings.warn("something a user can act on", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something a user can act on"]


@pytest.mark.slow
def test_shell_completion_lists_the_model_options(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "petseg-train"
    if not script.is_file():
        pytest.skip(f"{script} not installed (make install creates it)")
    env = {**os.environ, "COMP_LINE": "petseg-train model=", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(script), "-sc", "query=bash"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"model={name}" for name in model_names()]


WANDB_RUN = """
import sys, wandb
from lightning.pytorch.loggers import WandbLogger
from petseg.console import quiet_wandb
if sys.argv[1] == "quiet":
    quiet_wandb()
    quiet_wandb()  # twice: still one wrapper
logger = WandbLogger(project="petseg-test", save_dir=".", offline=True)
assert logger.experiment is not None  # wandb.init, where Lightning passes `anonymous`
wandb.termwarn("a warning a user can act on")
wandb.finish()
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_wandb_anonymous_notice_is_dropped_other_wandb_output_kept(
    tmp_path: Path, quiet: bool
) -> None:
    (tmp_path / "quiet_check.py").write_text(WANDB_RUN)
    mode = "quiet" if quiet else "loud"
    done = run_module("quiet_check", mode, cwd=tmp_path, WANDB_MODE="offline", WANDB_SILENT="false")
    assert done.returncode == 0, done.stderr
    assert ("anonymous setting has no effect" in done.stderr) is not quiet
    assert done.stderr.count("a warning a user can act on") == 1
