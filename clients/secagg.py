"""The client side of secure aggregation (``secagg = true``): a NumPyClient under Flower's ``secaggplus_mod``.

SecAgg+ exists only on Flower's legacy path: ``secaggplus_mod`` reads a NumPyClient's ``fitres``
and replaces its arrays by a masked, quantized vector. :data:`secagg_app` is that legacy
ClientApp; :func:`secagg_route_mod` (the first mod of :data:`clients.app.app`) hands every
message of a ``secagg = true`` run to it, so one FAB serves both paths.

Training and evaluation are those of the normal path (:func:`clients.local.local_train`,
:func:`clients.local.local_evaluate`): the same private state on disk, the same metrics and
the same refusal of received tensors that are not exactly the federated names. What changes
is what leaves the client in a train reply:

1. :meth:`SecAggClient.fit` clips every Zs value to ``±secagg-clip`` and scales it by
   ``SECAGG_RANGE / secagg-clip`` into SecAgg+'s clipping range ``±8`` (float64);
2. ``secaggplus_mod`` multiplies by the weight ``num-examples / max_weight``, quantizes to
   2²² levels (stochastic rounding), adds the private and pairwise masks mod 2³² and sends only
   that vector; the ArrayRecord of the reply is emptied;
3. the server unmasks only the sum and unscales it (:mod:`server.secagg`).

With ``audit-log`` set, :func:`secagg_audit_mod` (outermost) appends one line per reply with
the SHA-256 and size of every array *and every bytes value* that leaves (the masked vector,
public keys, encrypted key shares), and :meth:`SecAggClient.fit` appends a ``"sent": false``
line with the digests of the plaintext Zs and keeps those values in
``<audit-log>.plain/round-RRR-partition-P.npz`` on the client's own disk, so a client can
check that what it sent is not its Zs. Private tensors never enter a message.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import serde
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from lopa_fed.errors import ConfigError
from lopa_fed.federation import (
    PARTITION_ID,
    SERVER_ROUND,
    FedSettings,
    federated_names,
    new_model,
)

from .audit import append_entry, digest, env_of
from .local import ClientEnv, local_evaluate, local_train

#: SecAgg+'s clipping range (Flower's default ``clipping_range``); Zs are scaled into ±this.
SECAGG_RANGE = 8.0
#: Test hook: ``"P:R"`` makes partition P fail its training of round R (a dropped client).
DROP_ENV = "LOPA_FED_TEST_DROP"


@functools.lru_cache(maxsize=8)
def shared_names(settings: FedSettings) -> tuple[str, ...]:
    """The federated tensor names in the model's stable order (the order of the NumPy lists on the wire)."""
    return tuple(federated_names(new_model(settings).roles(), settings.federate))


def scale_for_secagg(arrays: Mapping[str, np.ndarray], clip: float) -> tuple[list[np.ndarray], int]:
    """Clip to ``±clip`` and scale into ``±SECAGG_RANGE``.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        The trained shared tensors, e.g. ``prompt.zs`` of shape ``(m, d)``.
    clip : float
        ``secagg-clip``.

    Returns
    -------
    (scaled, clipped)
        float64 arrays of the same shapes, in the mapping's order, and how many values were clipped.
    """
    out, clipped = [], 0
    for value in arrays.values():
        v = np.asarray(value, dtype=np.float64)
        clipped += int(np.count_nonzero(np.abs(v) > clip))
        out.append(np.clip(v, -clip, clip) * (SECAGG_RANGE / clip))
    return out, clipped


class SecAggClient(NumPyClient):
    """LoPA's local training and evaluation behind the NumPy interface ``secaggplus_mod`` needs."""

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.settings = FedSettings.from_run_config(context.run_config)

    def _received(self, parameters: list[np.ndarray]) -> dict[str, np.ndarray]:
        names = shared_names(self.settings)
        if len(parameters) != len(names):
            raise ConfigError(f"received {len(parameters)} arrays, but federate=zs sends {len(names)} ({list(names)})")
        return dict(zip(names, parameters))

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Train on the global Zs; return them clipped and scaled for SecAgg+ (masked by the mod)."""
        env = env_of(self.ctx.node_config, config)
        rnd = int(config.get(SERVER_ROUND, 0))
        if os.environ.get(DROP_ENV, "") == f"{env.partition_id}:{rnd}":
            raise RuntimeError(f"{DROP_ENV}: partition {env.partition_id} drops out in round {rnd}")
        tensors, metrics = local_train(self.settings, env, self._received(parameters), server_round=rnd)
        plain = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
        scaled, clipped = scale_for_secagg(plain, self.settings.server.secagg_clip)
        self._audit_plain(env, rnd, plain, clipped, int(metrics["num-examples"]))
        return scaled, int(metrics["num-examples"]), dict(metrics)

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        """Personalised evaluation, exactly as on the normal path."""
        env = env_of(self.ctx.node_config, config)
        metrics = local_evaluate(self.settings, env, self._received(parameters))
        return float(metrics["eval-loss"]), int(metrics["num-examples"]), dict(metrics)

    def _audit_plain(self, env: ClientEnv, rnd: int, plain: dict[str, np.ndarray], clipped: int, n: int) -> None:
        path = self.settings.paths.audit_log
        if not path:
            return
        keep = Path(f"{path}.plain") / f"round-{rnd:03d}-partition-{env.partition_id}.npz"
        keep.parent.mkdir(parents=True, exist_ok=True)
        np.savez(keep, **plain)
        append_entry(path, {
            "type": "train", "stage": "plaintext", "sent": False, "partition": env.partition_id, "round": rnd,
            "time": time.time(), "clipped": clipped, "num_examples": n, "values": str(keep),
            "arrays": {name: digest(arr) for name, arr in plain.items()},
        })


def client_fn(context: Context):
    """The legacy ``client_fn``: a :class:`SecAggClient` for this node."""
    return SecAggClient(context).to_client()


def _bytes_values(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, bytes) for x in value):
        return list(value)
    return []


def secagg_audit_mod(message: Message, context: Context, call_next) -> Message:
    """Outermost mod: record every array and bytes value that leaves the client (``audit-log``)."""
    incoming = message.content.config_records.get(RECORD_KEY_CONFIGS, ConfigRecord())
    stage = str(incoming.get(Key.STAGE, ""))  # read first: secaggplus_mod pops it
    reply = call_next(message, context)
    path = FedSettings.from_run_config(context.run_config).paths.audit_log
    if not path or reply.has_error():
        return reply
    sent_bytes = {}
    for rname, rec in reply.content.config_records.items():
        for key, value in rec.items():
            blobs = _bytes_values(value)
            if blobs:
                h = hashlib.sha256()
                for b in blobs:
                    h.update(b)
                sent_bytes[f"{rname}/{key}"] = {"sha256": h.hexdigest(), "bytes": sum(len(b) for b in blobs),
                                                "items": len(blobs)}
    append_entry(path, {
        "type": message.metadata.message_type,
        "stage": stage,
        "sent": True,
        "partition": context.node_config.get(PARTITION_ID),
        "round": int(message.metadata.group_id) if str(message.metadata.group_id).isdigit() else None,
        "time": time.time(),
        "wire_bytes": int(serde.recorddict_to_proto(reply.content).ByteSize()),
        "arrays": {
            name: {"sha256": hashlib.sha256(arr.data).hexdigest(), "shape": list(arr.shape), "bytes": len(arr.data)}
            for rec in reply.content.array_records.values()
            for name, arr in rec.items()
        },
        "bytes_values": sent_bytes,
    })
    return reply


#: The legacy ClientApp of ``secagg = true`` runs.
secagg_app = ClientApp(client_fn=client_fn, mods=[secagg_audit_mod, secaggplus_mod])


def secagg_route_mod(message: Message, context: Context, call_next) -> Message:
    """First mod of :data:`clients.app.app`: a ``secagg = true`` run is served by :data:`secagg_app`."""
    if FedSettings.from_run_config(context.run_config).server.secagg:
        return secagg_app(message, context)
    return call_next(message, context)
