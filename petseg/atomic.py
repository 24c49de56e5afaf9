"""Atomic file writes: a temp file beside the target, fsync, then rename over it.

A crash or kill mid-write leaves the old file or the new one, never a torn one; a full disk leaves
the old file too, and raises a StorageError naming the folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from petseg.errors import StorageError

# Write errors that more room would fix: the disk is full, or the user's quota is.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from or while handling, says the disk is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def storage_error(path: str | Path, reason: str = "no space left on device") -> StorageError:
    """The one-line error for a failed write of `path`: the folder, and where to make room."""
    path = Path(path)
    error = StorageError(
        f"{reason} in {path.parent} (writing {path.name}): free space there, or put the run on "
        "a disk with room (hydra.run.dir=<dir>, or paths.log_dir=<dir>)"
    )
    error.errno = errno.ENOSPC  # an OSError too: callers that fall back on a failed write still do
    return error


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """`with atomic_open(p, "w") as f: f.write(...)`: p is replaced only when the block succeeds.

    On a full disk (ENOSPC/EDQUOT from a write, flush, fsync or close, also when the block's own
    error was raised while handling one) the temp file is removed and StorageError raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: others sharing the folder read it too
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, StorageError) and no_space(e):
            raise storage_error(path) from e
        raise
