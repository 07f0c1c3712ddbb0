"""One family of user-facing errors.

Every error a user can cause (a bad option, a missing file, a corrupt checkpoint)
is a :class:`LoPAError`. The ``lopa-fed`` command prints its message as one line
on stderr and exits with code 2; anything else is a bug and keeps its traceback.
Each subclass also derives from the matching built-in (``ValueError``,
``KeyError``, ``FileNotFoundError``) so existing ``except`` clauses still work.
"""

from __future__ import annotations

__all__ = [
    "LoPAError",
    "ConfigError",
    "DataError",
    "UnknownTaskError",
    "CheckpointError",
    "ModelNotFoundError",
    "OutputExistsError",
]


class LoPAError(Exception):
    """Base of every user-facing lopa-fed error; the message says what to fix."""


class ConfigError(LoPAError, ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


class DataError(LoPAError, ValueError):
    """A data file or directory is missing or malformed.

    The message names the file (or directory), the 1-based line number when a
    row is at fault, and what was expected.
    """


class UnknownTaskError(LoPAError, KeyError):
    """The task name is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(LoPAError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the model; the message says which."""


class ModelNotFoundError(LoPAError, FileNotFoundError):
    """A model name could not be resolved to local files; the message says what to install or pass."""


class OutputExistsError(LoPAError, FileExistsError):
    """An output already holds results that a command would overwrite; the message names the flag to pass."""
