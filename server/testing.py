"""An in-process Grid: runs ClientApps (or stand-ins) directly, for tests and debugging.

It implements the ``flwr.serverapp.Grid`` interface that the round loop uses
(``get_node_ids`` and ``send_and_receive``), delivering each message to the callable
registered for its destination node with a per-node :class:`flwr.app.Context`. An
exception in a client becomes an error reply, as in Flower's runtimes. It is not a
transport: real runs use Flower's simulation or deployment runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

ClientCallable = Callable[[Message, Context], Message]


def ensure_task_identity(run_id: int = 1) -> None:
    """Set Flower's process task identity, which ``Message(...)`` needs outside a runtime."""
    for attr, value in (("run_id", run_id), ("node_id", 1), ("task_id", 1)):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, value)


class InProcessGrid(Grid):
    """Deliver messages to in-process client callables.

    Parameters
    ----------
    clients : mapping
        ``{node_id: (callable, node_config)}``; the callable takes ``(message, context)``.
    run_config : mapping
        The run config every client sees.
    """

    def __init__(self, clients: Mapping[int, tuple[ClientCallable, dict[str, Any]]], run_config: Mapping[str, Any]) -> None:
        ensure_task_identity()
        self.clients = dict(clients)
        self.run_config = dict(run_config)
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=dict(cfg), state=RecordDict(), run_config=dict(run_config))
            for nid, (_, cfg) in self.clients.items()
        }
        self.sent: list[Message] = []
        self.received: list[Message] = []

    # -- the part of the Grid API the round loop uses
    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        out = []
        for msg in messages:
            self.sent.append(msg)
            nid = int(msg.metadata.dst_node_id)
            fn, _ = self.clients[nid]
            try:
                reply = fn(msg, self.contexts[nid])
            except Exception as exc:  # noqa: BLE001 - a client failure becomes an error reply
                reply = Message(error=Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self.received.append(reply)
            out.append(reply)
        return out

    # -- the rest of the abstract interface
    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used in-process
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - not used in-process
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError
