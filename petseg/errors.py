"""Errors a user can cause and fix; the CLIs print them as one line, without a traceback."""

from __future__ import annotations

import logging
import sys


class PetsegError(Exception):
    """A user-fixable problem: the message names the file or option and says the fix."""


class DataError(PetsegError):
    """The dataset on disk is missing or malformed."""


class ConfigError(PetsegError):
    """A config option has a value petseg cannot use."""


class StorageError(PetsegError, OSError):
    """A file could not be written (e.g. the disk is full); the message names the folder.

    Also an OSError, so code that falls back on a failed write (the decoded cache) still does.
    """


class NonFiniteLossError(PetsegError):
    """The training loss became NaN or Inf; the message names the step and what to try."""


def one_line(error: BaseException) -> str:
    """The message alone, also when a DataLoader worker wrapped it in its traceback text."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def print_user_error(error: BaseException, log: logging.Logger) -> None:
    """What every CLI does with a user error: log it, and print it as one `error:` line."""
    message = one_line(error)
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)


def user_error(error: BaseException) -> PetsegError | None:
    """The PetsegError behind an exception, also when Hydra's instantiate wrapped it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, PetsegError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
