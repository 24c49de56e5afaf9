"""Errors a user can cause and fix; the CLIs print them as one line, without a traceback."""


class PetsegError(Exception):
    """A user-fixable problem: the message names the file or option and says the fix."""


class DataError(PetsegError):
    """The dataset on disk is missing or malformed."""


class ConfigError(PetsegError):
    """A config option has a value petseg cannot use."""


class NonFiniteLossError(PetsegError):
    """The training loss became NaN or Inf; the message names the step and what to try."""
