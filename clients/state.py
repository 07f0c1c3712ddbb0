"""Client-side private state on disk, keyed by partition and by the instance encoder's identity.

In Flower's deployment runtime every message is handled by a new ``flwr-clientapp``
process, and ``context.state`` is lost whenever a SuperNode restarts; so the tensors a
client never sends (its private instance heads, or everything under ``federate=none``)
live in a safetensors file::

    <private-dir>/partition-<id>-of-<n>.safetensors           full MiniLM (or a non-tier encoder)
    <private-dir>/partition-<id>-of-<n>.<tier>.safetensors    encoder tier <tier> (minilm-l3, static, ...)

The tier key is :func:`lopa_fed.tiers.state_key` of the encoder identity, which the file's
metadata also records (``encoder``): a node that changes its encoder finds no file for the new
one, says so (naming the encoder it ran before) and starts fresh heads; it never loads heads
made for another encoder, and its old heads stay in their own file.

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
from lopa_fed.federation.paths import PRIVATE_PATTERN, private_file
from lopa_fed.tiers import state_key

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
    encoder : str
        Identity of the node's instance encoder (``""``: not recorded, the plain file name).

    Attributes
    ----------
    switched_from : str or None
        After :meth:`load`: the encoder identity this partition's newest other private state was
        made for, when there is none for ``encoder`` (a tier switch); else ``None``.
    """

    def __init__(self, root: str | Path, partition_id: int, num_partitions: int, encoder: str = "") -> None:
        self.root = Path(root)
        self.partition_id = int(partition_id)
        self.num_partitions = int(num_partitions)
        self.encoder = str(encoder)
        self.switched_from: str | None = None

    @property
    def path(self) -> Path:
        """The safetensors file."""
        return self.root / private_file(self.partition_id, self.num_partitions, state_key(self.encoder))

    def save(
        self, tensors: dict[str, torch.Tensor], *, state_tag: str, fingerprint: str, server_round: int,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Atomically write ``tensors`` with the tag, fingerprint, round, encoder (and ``extra``) in the metadata."""
        meta = {
            **(extra or {}),
            "format": FORMAT,
            "state-tag": state_tag,
            "fingerprint": fingerprint,
            "round": str(int(server_round)),
            "partition": f"{self.partition_id}/{self.num_partitions}",
        }
        if self.encoder:
            meta["encoder"] = self.encoder
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
        self.switched_from = self.previous_encoder(state_tag)
        if self.switched_from is not None:
            log.warning(
                "partition %d switched its instance encoder from %s to %s: starting fresh heads (heads made for "
                "the other encoder are never loaded)", self.partition_id, self.switched_from, self.encoder,
            )
            return None
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

    def siblings(self) -> list[Path]:
        """This partition's private-state files for other encoders (same number of partitions)."""
        out = []
        for p in self.root.iterdir() if self.root.is_dir() else []:
            m = PRIVATE_PATTERN.fullmatch(p.name)
            if m and (int(m.group(1)), int(m.group(2))) == (self.partition_id, self.num_partitions) and p != self.path:
                out.append(p)
        return out

    def previous_encoder(self, state_tag: str) -> str | None:
        """The encoder this partition ran before in this run, if it is not :attr:`encoder` (a tier switch).

        Looks at this encoder's file (its recorded ``encoder``) and, when there is none, at the
        partition's files for other encoders with the same ``state_tag`` (the newest round wins).
        ``None`` when the encoder is unknown (``""``), unchanged, or the partition has no state yet.
        """
        if not self.encoder:
            return None
        paths = [self.path] if self.path.is_file() else self.siblings()
        found = []
        for p in paths:
            try:
                meta = self._meta_of(p)
            except CheckpointError:
                continue  # a bad file: load() reports it
            old = meta.get("encoder", self.encoder)
            if meta.get("state-tag") == state_tag and old != self.encoder:
                found.append((int(meta.get("round", "0") or 0), old))
        return max(found)[1] if found else None

    @staticmethod
    def _meta_of(path: Path) -> dict[str, str]:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return dict(f.metadata() or {})
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt header
            raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc

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
