"""What both ClientApps (plain and SecAgg+) share: the client's environment and the audit log.

:func:`env_of` reads the partition and paths (node config first, then the server's config);
:func:`digest` and :func:`append_entry` write the audit log of what leaves a client, one JSON
line per record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lopa_fed.errors import ConfigError
from lopa_fed.federation import DATA_DIR, NUM_PARTITIONS, PARTITION_ID, PRIVATE_DIR, STATE_TAG

from .local import ClientEnv


def env_of(node: Mapping[str, Any], config: Mapping[str, Any]) -> ClientEnv:
    """Partition and paths from the node config (first) and the server's train/evaluate config.

    Raises
    ------
    ConfigError
        No ``partition-id`` / ``num-partitions`` in the node config, or no private-state directory.
    """
    if PARTITION_ID not in node or NUM_PARTITIONS not in node:
        raise ConfigError(
            "node config lacks partition-id/num-partitions; start the SuperNode with "
            '--node-config "partition-id=I num-partitions=N"'
        )
    private_dir = str(node.get(PRIVATE_DIR, "") or config.get(PRIVATE_DIR, "") or os.environ.get("LOPA_FED_PRIVATE_DIR", ""))
    if not private_dir:
        raise ConfigError("no private-state directory: set private-dir in the run config or the node config")
    return ClientEnv(
        partition_id=int(node[PARTITION_ID]),
        num_partitions=int(node[NUM_PARTITIONS]),
        data_dir=str(node.get(DATA_DIR, "") or config.get(DATA_DIR, "") or ""),
        private_dir=private_dir,
        state_tag=str(config.get(STATE_TAG, "")),
    )


def digest(arr: np.ndarray) -> dict[str, Any]:
    """SHA-256 of an array's raw values (``tobytes()``), with its shape and dtype."""
    a = np.ascontiguousarray(arr)
    return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "shape": list(a.shape), "dtype": str(a.dtype)}


def append_entry(path: str | Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line with one O_APPEND write, so concurrent clients never interleave."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
    finally:
        os.close(fd)
