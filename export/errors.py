"""The export package's user-facing error (the runtime's own is :class:`export.runtime.ExportFormatError`)."""

from __future__ import annotations

from lopa_fed.errors import LoPAError

__all__ = ["ExportError"]


class ExportError(LoPAError, RuntimeError):
    """An export cannot be made: bad arguments, an existing output, a failed check; the message says why."""
