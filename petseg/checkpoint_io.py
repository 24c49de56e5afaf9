"""Checkpoints written atomically: a kill mid-write leaves the previous file, never a torn one.

Lightning's own save moves a temp file into place (fsspec) but never fsyncs, and a full disk
surfaces as torch's `unexpected pos`; this one fsyncs and names the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from petseg.atomic import atomic_open, no_space, storage_error

# What torch.save raises when a write under it fails ("unexpected pos 704 vs 598" when the file
# object's write raised, e.g. ENOSPC: atomic_open finds that OSError in the chain).
TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed writing file")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but saving through a temp file and a rename.

    A full disk raises petseg.errors.StorageError naming the folder; the previous file stays.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_open(path, "wb") as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as e:
                if no_space(e) or not any(s in str(e) for s in TORCH_WRITE_FAILED):
                    raise  # atomic_open names a full disk it can see
                torch_says = str(e).strip().splitlines()[0]
                raise storage_error(
                    path, f"the write failed ({torch_says}), most likely no space left on device"
                ) from e
