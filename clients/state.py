"""Client-side private state on disk, keyed by partition.

In Flower's deployment runtime every message is handled by a new ``flwr-clientapp``
process, and ``context.state`` is lost whenever a SuperNode restarts; so the tensors a
client never sends (its private instance heads, or everything under ``federate=none``)
live in a safetensors file::

    <private-dir>/partition-<id>-of-<n>.safetensors

The file's metadata records the run's ``state-tag`` (a fresh run starts from a fresh
tag; ``--resume`` keeps it) and a settings fingerprint. A file whose tag or fingerprint
does not match belongs to another run and is not restored (logged). A file that cannot be
read, or whose tensors are not the expected ones, is *bad*: by default
(``on-bad-private-state = "error"``) loading it raises :class:`PrivateStateError` naming
the file, and the file is left as it is; with ``"fresh"`` it is moved to ``<file>.bad`` and
the client starts from fresh heads (logged). Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lopa_fed.checkpoint import CheckpointError, load_tensors, save_tensors
from lopa_fed.federation.paths import private_file

log = logging.getLogger("flwr.lopa_fed.clients")

FORMAT = "lopa-fed-private/1"


class PrivateStateError(CheckpointError):
    """A client's private-state file of this run cannot be used; the message names the file and the way out."""


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
        return self.root / private_file(self.partition_id, self.num_partitions)

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
        """The file's metadata, or ``None`` if there is no file.

        Raises
        ------
        CheckpointError
            The file exists but is not a readable safetensors file.
        """
        if not self.path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                return dict(f.metadata() or {})
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt header
            raise CheckpointError(f"{self.path} is not a valid safetensors file ({exc})") from exc

    def load(
        self, *, state_tag: str, fingerprint: str, expected: dict[str, tuple[int, ...]], on_bad: str = "error"
    ) -> dict[str, torch.Tensor] | None:
        """Tensors saved for this run, or ``None`` (logged) when absent or from another run.

        Parameters
        ----------
        state_tag, fingerprint : str
            Must equal what :meth:`save` recorded; otherwise the file belongs to another run.
        expected : dict
            ``{name: shape}`` the file must hold exactly.
        on_bad : {"error", "fresh"}
            What to do with a bad file (unreadable, non-finite or wrong tensors): raise, or move
            it to ``<file>.bad`` and return ``None`` (the run config's ``on-bad-private-state``).

        Raises
        ------
        PrivateStateError
            The file is bad and ``on_bad == "error"``; the file is left untouched.
        """
        if not self.path.is_file():
            return None
        try:
            meta = self.metadata() or {}
        except CheckpointError as exc:
            return self._bad(str(exc).replace(str(self.path), "it"), on_bad)
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
            return self._bad(str(exc).replace(str(self.path), "it"), on_bad)
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        want = {k: tuple(v) for k, v in expected.items()}
        if got != want:
            diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
            names = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
            return self._bad(f"it holds the wrong tensors ({names} differ from this run's private tensors)", on_bad)
        return tensors

    def _bad(self, reason: str, on_bad: str) -> None:
        """Raise for a bad file, or (``on_bad == "fresh"``) move it aside and start fresh."""
        if on_bad != "fresh":
            raise PrivateStateError(
                f"private state {self.path} of this run cannot be used: {reason}. Restore the file, or set "
                'on-bad-private-state = "fresh" (lopa-fed: --set on-bad-private-state=fresh) to start this client '
                "from fresh heads"
            )
        aside = self.path.with_name(self.path.name + ".bad")
        os.replace(self.path, aside)
        log.warning("private state %s cannot be used (%s); moved to %s, starting from fresh heads", self.path, reason, aside)
        return None
