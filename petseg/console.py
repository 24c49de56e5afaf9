"""What a run prints at start: the config as a tree (also saved), and no noise nobody can act on."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

# The top-level keys shown first, in this order; the rest follow as the config has them.
FIRST = (
    "data",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "perf",
    "callbacks",
    "logger",
)


class DropLightningTip(logging.Filter):
    """Lightning's advert for its cloud logger, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


def quiet_known_noise() -> None:
    """Filter, at their source, messages a user cannot act on (not every warning)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLightningTip) for f in rank_zero.filters):
        rank_zero.addFilter(DropLightningTip())
    # torch deprecates LeafSpec; Lightning 2.6's own _pytree helper still checks for it.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )


def quiet_wandb() -> None:
    """Drop wandb's "anonymous setting has no effect", printed on every run: Lightning's
    WandbLogger always passes `anonymous`, and wandb prints through its termwarn, not Python
    warnings, so that one message is filtered in a wrapper of `wandb.termwarn`."""
    import wandb

    termwarn = wandb.termwarn
    if getattr(termwarn, "petseg_quiet", False):
        return

    def filtered(string: str, *args: Any, **kwargs: Any) -> None:
        if "anonymous setting has no effect" not in str(string):
            termwarn(string, *args, **kwargs)

    filtered.petseg_quiet = True  # type: ignore[attr-defined]
    wandb.termwarn = filtered


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config as a rich Tree, one branch per top-level key."""
    tree = Tree("config", guide_style="dim")
    keys = [k for k in FIRST if k in cfg] + [k for k in cfg if k not in FIRST]
    for key in keys:
        node = OmegaConf.select(cfg, str(key), throw_on_resolution_failure=False)
        if isinstance(node, DictConfig | ListConfig):
            try:
                text = OmegaConf.to_yaml(node, resolve=True)
            except Exception:  # e.g. ${hydra:...} outside a Hydra app: show it unresolved
                text = OmegaConf.to_yaml(node)
        else:
            text = f"{node}"
        tree.add(str(key)).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    return tree


def print_config(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the tree, and write it as plain text to `save_to` (the run's config_tree.log)."""
    tree = config_tree(cfg)
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with save_to.open("w") as f:
            Console(file=f, width=120, color_system=None).print(tree)
