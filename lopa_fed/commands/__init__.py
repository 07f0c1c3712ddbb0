"""The core's ``lopa-fed`` subcommands: ``train`` and ``evaluate`` (single party, centralized).

Registered through the ``lopa_fed.commands`` entry-point group like every other
package's subcommands (see :mod:`lopa_fed.cli`).
"""

from __future__ import annotations

from typing import Any

from . import evaluate, train


def register(subparsers: Any) -> None:
    """Add ``train`` and ``evaluate`` to the ``lopa-fed`` subcommand parsers."""
    train.register(subparsers)
    evaluate.register(subparsers)
