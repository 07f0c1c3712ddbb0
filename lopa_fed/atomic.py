"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of either.

Every file lopa-fed writes for a user goes through here: run summaries, checkpoints,
exports and private client state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["replace_dir", "staged_dir", "write_bytes", "write_text", "write_with"]


def write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary sibling of ``path``, then rename it over ``path``.

    The temporary file is removed if ``writer`` fails, so ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def replace_dir(stage: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Swap the finished directory ``stage`` in as ``target`` (any old ``target`` is removed after).

    Both must be on one filesystem (make ``stage`` a sibling of ``target``). Between the two
    renames ``target`` is briefly absent, never a mix of old and new files.
    """
    stage, target = Path(stage), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces ``target``, on error it is deleted.

    >>> with staged_dir("runs/x/checkpoint") as d:   # doctest: +SKIP
    ...     (d / "config.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield stage
        replace_dir(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
