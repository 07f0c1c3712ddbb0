"""Client-side private state on disk, keyed by partition.

In Flower's deployment runtime every message is handled by a new ``flwr-clientapp``
process, and ``context.state`` is lost whenever a SuperNode restarts; so the tensors a
client never sends (its private instance heads, or everything under ``federate=none``)
live in a safetensors file::

    <private-dir>/partition-<id>-of-<n>.safetensors

The file's metadata records the run's ``state-tag`` (a fresh run starts from a fresh
tag; ``--resume`` keeps it) and a settings fingerprint. A file whose tag or fingerprint
does not match is not restored. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lopa_fed.checkpoint import CheckpointError, load_tensors, save_tensors

log = logging.getLogger("flwr.lopa_fed.clients")

FORMAT = "lopa-fed-private/1"


class PrivateStore:
    """The private-state file of one partition.

    Parameters
    ----------
    root : str or Path
        Private-state directory (absolute).
    partition_id, num_partitions : int
        The partition this client trains on.
    """

    def __init__(self, root: str | Path, partition_id: int, num_partitions: int) -> None:
        self.root = Path(root)
        self.partition_id = int(partition_id)
        self.num_partitions = int(num_partitions)

    @property
    def path(self) -> Path:
        """The safetensors file."""
        return self.root / f"partition-{self.partition_id}-of-{self.num_partitions}.safetensors"

    def save(self, tensors: dict[str, torch.Tensor], *, state_tag: str, fingerprint: str, server_round: int) -> None:
        """Atomically write ``tensors`` with the tag, fingerprint and round in the metadata."""
        meta = {
            "format": FORMAT,
            "state-tag": state_tag,
            "fingerprint": fingerprint,
            "round": str(int(server_round)),
            "partition": f"{self.partition_id}/{self.num_partitions}",
        }
        save_tensors(self.path, tensors, meta)

    def metadata(self) -> dict[str, str] | None:
        """The file's metadata, or ``None`` if there is no readable file."""
        if not self.path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                return dict(f.metadata() or {})
        except Exception:  # noqa: BLE001 - a corrupt file is reported by load()
            return None

    def load(self, *, state_tag: str, fingerprint: str, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
        """Tensors saved for this run, or ``None`` (logged) when absent, stale or unreadable.

        Parameters
        ----------
        state_tag, fingerprint : str
            Must equal what :meth:`save` recorded.
        expected : dict
            ``{name: shape}`` the file must hold exactly.
        """
        if not self.path.is_file():
            return None
        meta = self.metadata() or {}
        if meta.get("state-tag") != state_tag or meta.get("fingerprint") != fingerprint:
            log.warning(
                "private state %s belongs to another run (tag %s, fingerprint %s); starting from a fresh init",
                self.path,
                meta.get("state-tag"),
                meta.get("fingerprint"),
            )
            return None
        try:
            tensors = load_tensors(self.path)
        except CheckpointError as exc:
            log.warning("private state unreadable, starting from a fresh init: %s", exc)
            return None
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != {k: tuple(v) for k, v in expected.items()}:
            log.warning("private state %s holds %s, expected %s; starting from a fresh init", self.path, got, expected)
            return None
        return tensors
