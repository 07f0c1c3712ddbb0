"""A Grid wrapper that measures every exchange of a SecAgg+ round and keeps what the server received.

:class:`MeteredGrid` forwards ``send_and_receive`` to Flower's Grid and records, per call, the
SecAgg+ stage (``setup``, ``share_keys``, ``collect_masked_vectors``, ``unmask``, or our own
``evaluate``), the seconds it took, the serialized size of every message each way
(``recorddict_to_proto(content).ByteSize()``, the protobuf a RecordDict travels as) and the
error replies with their nodes. In the ``collect_masked_vectors`` stage it also keeps each
node's masked vector as received (SHA-256, and the arrays themselves in
``OUT/secagg/round-NNN-masked.npz``): that is everything the server ever learns about a
single client's Zs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common import bytes_to_ndarray, serde
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from lopa_fed import atomic

__all__ = ["MeteredGrid", "StageLog", "message_bytes"]


def message_bytes(msg: Message) -> int:
    """Serialized size of a message's content (0 for an error reply)."""
    if msg.has_error() or not msg.has_content():
        return 0
    return int(serde.recorddict_to_proto(msg.content).ByteSize())


def _stage_of(messages: list[Message]) -> str:
    for msg in messages:
        rec = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if rec is not None and Key.STAGE in rec:
            return str(rec[Key.STAGE])
    return messages[0].metadata.message_type if messages else ""


@dataclass
class StageLog:
    """One ``send_and_receive`` of a round."""

    stage: str
    seconds: float
    sent: list[int]
    replied: list[int]
    bytes_down: int
    bytes_up: int
    errors: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The stage's entry in ``rounds.json`` (``secagg.stages``)."""
        return {
            "stage": self.stage, "seconds": round(self.seconds, 4), "sent": len(self.sent),
            "replied": len(self.replied), "bytes_down": self.bytes_down, "bytes_up": self.bytes_up,
            "errors": [{"node": n, "reason": r} for n, r in self.errors],
        }


class MeteredGrid:
    """Forward to ``grid`` and log each exchange (everything else is delegated unchanged).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's Grid.
    out_dir : Path
        Run directory; masked vectors go to ``out_dir/secagg/round-NNN-masked.npz``.
    """

    def __init__(self, grid: Any, out_dir: Path) -> None:
        self._grid = grid
        self.out_dir = Path(out_dir)
        self.round = 0
        self.stages: list[StageLog] = []
        self.masked_sha256: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def begin_round(self, rnd: int) -> None:
        """Start the logs of round ``rnd``."""
        self.round, self.stages, self.masked_sha256 = int(rnd), [], {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's ``send_and_receive``, measured."""
        msgs = list(messages)
        stage = _stage_of(msgs)
        down = sum(message_bytes(m) for m in msgs)  # before sending: the grid may consume the content
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(msgs, timeout=timeout))
        seconds = time.perf_counter() - t0
        errors = [(int(r.metadata.src_node_id), str(r.error.reason)) for r in replies if r.has_error()]
        self.stages.append(StageLog(
            stage, seconds, [int(m.metadata.dst_node_id) for m in msgs],
            [int(r.metadata.src_node_id) for r in replies if not r.has_error()],
            down, sum(message_bytes(r) for r in replies), errors,
        ))
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self._keep_masked(replies)
        return replies

    def _keep_masked(self, replies: list[Message]) -> None:
        arrays: dict[str, np.ndarray] = {}
        for reply in replies:
            if reply.has_error():
                continue
            node = int(reply.metadata.src_node_id)
            blobs = list(reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
            h = hashlib.sha256()
            for i, blob in enumerate(blobs):
                h.update(blob)
                arrays[f"node-{node}-{i}"] = bytes_to_ndarray(blob)
            self.masked_sha256[node] = h.hexdigest()
        path = self.out_dir / "secagg" / f"round-{self.round:03d}-masked.npz"
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic.write_with(path, write)

    def totals(self) -> tuple[int, int, float]:
        """``(bytes_down, bytes_up, seconds)`` over this round's SecAgg+ stages (not ``evaluate``)."""
        st = [s for s in self.stages if s.stage in Stage.all()]
        return sum(s.bytes_down for s in st), sum(s.bytes_up for s in st), sum(s.seconds for s in st)
