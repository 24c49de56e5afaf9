"""How a run ends: its `status.json` (pid and heartbeat while it runs) and signal interrupts.

A process killed with -9 cannot write its end, so `status` stays `running`; the pid, host and a
heartbeat refreshed every HEARTBEAT_S seconds let `report` and a resume tell a live run from a
dead one (`effective_status` says `killed`). SIGINT and SIGTERM end a run as `Interrupted`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petseg.atomic import atomic_open

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("petseg.run_status")

STATUS_FILE = "status.json"
HEARTBEAT_S = 30.0
# A run on another host is taken as dead when its heartbeat is this many intervals old.
STALE_HEARTBEATS = 4


def read_status(folder: str | Path) -> dict[str, Any]:
    """The run folder's status.json as a dict; {} when absent or unreadable."""
    try:
        data = json.loads((Path(folder) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_alive(status: dict[str, Any], now: float | None = None) -> bool:
    """Whether the process that wrote a `running` status still runs.

    On this host its pid answers; elsewhere only a fresh heartbeat counts.
    """
    pid, host = status.get("pid"), status.get("host")
    if isinstance(pid, int) and host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True
    beat = status.get("heartbeat")
    interval = status.get("heartbeat_s", HEARTBEAT_S)
    if not isinstance(beat, (int, float)):
        return False
    return (now or time.time()) - beat < STALE_HEARTBEATS * interval


def effective_status(status: dict[str, Any]) -> str:
    """The recorded status, but `killed` for a `running` run whose process is gone (a status
    without pid and heartbeat, from an older petseg, stays as written)."""
    state = status.get("status", "unknown")
    known = "pid" in status or "heartbeat" in status
    if state == "running" and known and not is_alive(status):
        return "killed"
    return state


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete (and log) the half-written `.<name>.*.tmp` files (petseg.atomic) a killed run left
    in `<folder>/checkpoints`; the caller makes sure that run is dead."""
    removed = []
    for tmp in (Path(folder) / "checkpoints").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        log.warning("Removed %s, a checkpoint half-written by a run that was killed", tmp)
        removed.append(tmp)
    return removed


class StatusFile:
    """Writes `<folder>/status.json` atomically; `beat()` starts the heartbeat thread."""

    def __init__(self, folder: str | Path, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = Path(folder) / STATUS_FILE
        self.heartbeat_s = heartbeat_s
        self.started = time.time()
        self.fields: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, status: str, **fields: Any) -> None:
        """Record `status` with `fields` (kept for later writes) plus pid, host and times."""
        with self._lock:
            self.fields.update(fields)
            now = time.time()
            data = {
                "status": status,
                **self.fields,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": round(self.started, 3),
                "heartbeat": round(now, 3),
                "heartbeat_s": self.heartbeat_s,
                "seconds": round(now - self.started, 1),
            }
            with atomic_open(self.path, "w") as f:
                json.dump(data, f, indent=1)

    def beat(self) -> None:
        """Refresh the heartbeat every heartbeat_s seconds until `end` is written."""
        self._thread = threading.Thread(target=self._run, name="petseg-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(Exception):  # a full disk: the next beat tries again
                self.write("running")

    def end(self, status: str, **fields: Any) -> None:
        """Stop the heartbeat, then record how the run ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write(status, **fields)


class Interrupted(BaseException):
    """SIGINT or SIGTERM ended the run; `code` is the shell's exit status for it, 128 + signal.

    A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.code = 128 + signum
        super().__init__(f"interrupted by {self.name}")


class SigtermGuard:
    """`with SigtermGuard() as guard:` SIGTERM raises Interrupted instead of killing silently.

    Inside `trainer.fit`/`test` Lightning chains its own handler before this one and stops at the
    next batch boundary (`SIGTERMException`); set `guard.trainer` so this one then stands aside.
    """

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.trainer is not None and self.trainer.received_sigterm:
            return  # Lightning's handler ran first and ends the loop cleanly
        raise Interrupted(signum)

    def __enter__(self) -> SigtermGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
