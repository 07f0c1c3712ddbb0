"""Where a result came from: the git commit of the checkout and the versions of the packages used."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["git_state", "package_versions"]

_REPO = Path(__file__).resolve().parents[1]


def git_state(cwd: str | Path = _REPO) -> dict[str, str | bool | None]:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``cwd``; ``None`` values outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return {"commit": sha or None, "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(packages: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each package (``None`` when absent), plus ``python``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out
