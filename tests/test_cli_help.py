"""`--help` of each CLI (conf/hydra/help/<cli>.yaml): the keys and the config groups that CLI
reads, not training's groups; training's help still lists every group."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# The groups each CLI composes (its defaults list, less hydra).
GROUPS = {
    "evaluate": {"data", "trainer", "paths", "logger"},
    "predict": {"paths"},
    "export": {"paths"},
}
TRAINING_ONLY = ("model", "loss", "optimizer", "scheduler", "experiment", "callbacks", "debug")
CLIS = (*GROUPS, "train")


def start_help(cli: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", f"petseg.{cli}", "--help"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE, text=True)


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """`python -m petseg.<cli> --help` of every CLI, run side by side (each imports torch)."""
    procs = {cli: start_help(cli) for cli in CLIS}
    texts = {}
    for cli, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{cli}: {err[-2000:]}"
        texts[cli] = out
    return texts


def own_keys(cli: str) -> list[str]:
    """The dotted leaf keys conf/<cli>.yaml sets itself (not its groups', nor task_name)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / f"{cli}.yaml"))
    assert isinstance(node, dict)

    def leaves(tree: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in tree.items():
            if isinstance(value, dict):
                found += leaves(value, f"{prefix}{key}.")
            else:
                found.append(f"{prefix}{key}")
        return found

    return [k for k in leaves(node) if k not in ("defaults", "task_name")]


def listed_groups(text: str) -> dict[str, list[str]]:
    """`group: a, b` lines of the help's group section, as group -> options."""
    section = text.split("== Config groups (group=option) ==", 1)[1]
    return {g: opts.split(", ") for g, opts in re.findall(r"^  (\w+): (.+)$", section, re.M)}


@pytest.mark.parametrize("cli", list(GROUPS))
def test_help_lists_the_clis_groups_not_trainings(cli: str, helps: dict[str, str]) -> None:
    text = helps[cli]
    assert text.startswith(f"petseg.{cli}: ") and "${" not in text
    groups = listed_groups(text)
    assert set(groups) == GROUPS[cli]
    for group, options in groups.items():  # the options are the group's yaml files, all of them
        assert options == sorted(p.stem for p in (CONF / group).glob("*.yaml")), group
    for group in TRAINING_ONLY:
        assert not re.search(rf"(?<![\w./]){group}[:=]", text), f"{cli} --help lists {group}"


@pytest.mark.parametrize("cli", list(GROUPS))
def test_help_names_every_key_of_the_cli(cli: str, helps: dict[str, str]) -> None:
    """Each key conf/<cli>.yaml sets starts a line of the options as `key=<value>`."""
    keys = own_keys(cli)
    assert {"evaluate": {"ckpt_path", "resolution"}, "predict": {"input", "output"}}.get(
        cli, {"ckpt_path"}
    ) <= set(keys)
    options = helps[cli].split("== Options ==", 1)[1].split("==", 1)[0]
    for key in keys:
        assert re.search(rf"^  {re.escape(key)}=\S", options, re.M), key
    assert "python -m petseg." + cli in helps[cli]  # an example command


def test_train_help_still_lists_every_group(helps: dict[str, str]) -> None:
    text = helps["train"]
    assert text.startswith("petseg.train: ")
    for group in ("model", "loss", "optimizer", "scheduler", "experiment", "data", "logger"):
        line = re.search(rf"^{group}: (.+)$", text, re.M)
        assert line, group
        assert line.group(1).split(", ") == sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert "seed: 42" in text  # the composed config follows
