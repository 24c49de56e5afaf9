"""Atomic checkpoint writes: the old file survives a failed write; no temp files are left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from petseg.atomic import atomic_open
from petseg.checkpoint_io import AtomicCheckpointIO
from petseg.errors import StorageError, one_line


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


class FullDisk:
    """A file that takes `room` bytes, then fails every write with ENOSPC, as a full disk does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def assert_no_space_line(error: StorageError, path: Path) -> None:
    message = one_line(error)
    assert "\n" not in message and "Traceback" not in message
    assert f"no space left on device in {path.parent}" in message
    assert "free space" in message and "hydra.run.dir=" in message
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC  # fallbacks still catch it


@pytest.mark.parametrize("room", [0, 100, 1000])
def test_full_disk_under_torch_save_is_one_line_and_keeps_old(
    room: int, tmp_path: Path, monkeypatch
) -> None:
    """torch.save through a file whose write hits ENOSPC: torch raises OSError or its own
    RuntimeError ('unexpected pos ...', the OSError as its context), depending on where."""
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    old = path.read_bytes()
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f, room)))
    with pytest.raises(StorageError) as raised:
        io.save_checkpoint({"step": 2, "w": torch.zeros(10_000)}, path)
    assert_no_space_line(raised.value, path)
    assert path.read_bytes() == old  # the previous checkpoint, byte for byte
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no .tmp left


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        RuntimeError(
            "[enforce fail at inline_container.cc:815] . PytorchStreamWriter failed "
            "writing file data/0: file write failed"
        ),
    ],
)
def test_save_errors_of_a_full_disk_are_one_line(
    error: Exception, tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "last.ckpt"

    def failing_save(obj, f) -> None:
        f.write(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    io = AtomicCheckpointIO()
    path.write_bytes(b"old checkpoint")
    with pytest.raises(StorageError) as raised:
        io.save_checkpoint({"step": 2}, path)
    assert_no_space_line(raised.value, path)
    assert path.read_bytes() == b"old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_full_disk_at_fsync_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """The last buffered bytes may reach the disk only at fsync: ENOSPC there is caught too."""
    path = tmp_path / "scan.json"
    path.write_text("old")

    def full_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(StorageError) as raised, atomic_open(path, "w") as f:
        f.write("new")
    assert_no_space_line(raised.value, path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["scan.json"]


def test_other_write_errors_are_left_alone(tmp_path: Path, monkeypatch) -> None:
    def failing_save(obj, f) -> None:
        raise RuntimeError("some other torch bug")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="some other torch bug"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")
