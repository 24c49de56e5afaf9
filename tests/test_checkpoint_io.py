"""Atomic checkpoint writes: the old file survives a failed write; no temp files are left."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from petseg.checkpoint_io import AtomicCheckpointIO


def test_atomic_save_roundtrip_and_failure_keeps_old(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1

    def broken_save(obj, f) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left
