"""Paths of a federated run, made absolute where the launcher or the ServerApp runs.

The apps run inside ``$FLWR_HOME/apps/...`` with the SuperLink's or SuperNode's working
directory, so every path is resolved before it is sent to a client.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..tasks import resolve_data_dir
from .sections import PathsConfig

__all__ = [
    "GLOBAL_DIR", "LATEST_FILE", "PRIVATE_PATTERN", "ROUND_PATTERN", "RUN_FILE", "STATE_FILE",
    "RunPaths", "absolute", "data_dir", "private_file", "round_file", "run_paths",
]

# The layout of a run directory, written by server/ and clients/, read by export/::
#
#     run.json                                  settings, federated tensor names, status
#     state.json                                state-tag and last completed round (for --resume)
#     global/round-NNN.safetensors              global shared tensors after round NNN (000: initial)
#     global/latest.safetensors                 the newest of those
#     <private-dir>/partition-<i>-of-<n>.safetensors   client i's private tensors (full MiniLM or a non-tier encoder)
#     <private-dir>/partition-<i>-of-<n>.<tier>.safetensors   ... with encoder tier <tier> (lopa_fed.tiers.state_key)
RUN_FILE = "run.json"
STATE_FILE = "state.json"
GLOBAL_DIR = "global"
LATEST_FILE = "latest.safetensors"
ROUND_PATTERN = re.compile(r"round-(\d+)\.safetensors")
#: Groups: partition, number of partitions, encoder key (``None`` for the plain file name).
PRIVATE_PATTERN = re.compile(r"partition-(\d+)-of-(\d+)(?:\.([a-z0-9-]+))?\.safetensors")


def round_file(server_round: int) -> str:
    """File name of the global tensors after ``server_round``."""
    return f"round-{server_round:03d}.safetensors"


def private_file(partition_id: int, num_partitions: int, key: str = "") -> str:
    """File name of partition ``partition_id``'s private tensors for encoder key ``key`` (``""``: the plain name)."""
    return f"partition-{partition_id}-of-{num_partitions}" + (f".{key}" if key else "") + ".safetensors"


def absolute(path: str, base: Path | None = None) -> str:
    """``path`` made absolute against ``base`` (default: cwd), with ``~`` expanded; ``""`` stays ``""``."""
    if not path:
        return ""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return str(p.resolve())


def data_dir(path: str) -> str:
    """The absolute data directory: ``path``, else the one found automatically, else ``""`` (clients look)."""
    if path:
        return absolute(path)
    found = resolve_data_dir(None)
    return str(found.resolve()) if found is not None else ""


@dataclass(frozen=True)
class RunPaths:
    """Absolute paths of a run: ``output_dir``, ``private_dir`` (default ``<output_dir>/private``), ``data_dir``."""

    output_dir: Path
    private_dir: str
    data_dir: str


def run_paths(paths: PathsConfig) -> RunPaths:
    """Resolve the paths of ``paths`` (a :class:`~lopa_fed.federation.sections.PathsConfig`)."""
    out = Path(absolute(paths.output_dir))
    return RunPaths(out, absolute(paths.private_dir) or str(out / "private"), data_dir(paths.data_dir))
