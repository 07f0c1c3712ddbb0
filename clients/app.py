"""The Flower ClientApp: local LoPA training and personalised evaluation.

Each message carries the current global shared tensors (an ArrayRecord under
``"arrays"``) and a ConfigRecord under ``"config"`` with the absolute ``data-dir``,
``private-dir`` and the run's ``state-tag``. The node config gives
``partition-id`` / ``num-partitions`` (set by the simulation runtime, or by
``flower-supernode --node-config``); a node may also set its own ``private-dir`` and
``data-dir`` there, which take precedence.

A train reply carries only the federated tensors (:func:`lopa_fed.federation.federated_names`)
and a MetricRecord with ``num-examples``. Private tensors never enter a Message. Record and
config keys come from the shared contract (:mod:`lopa_fed.federation.protocol`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lopa_fed.errors import ConfigError
from lopa_fed.federation import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DATA_DIR,
    METRICS_KEY,
    NUM_PARTITIONS,
    PARTITION_ID,
    PRIVATE_DIR,
    PROXIMAL_MU,
    SERVER_ROUND,
    STATE_TAG,
    FedSettings,
)

from .local import ClientEnv, local_evaluate, local_train


def client_env(message: Message, context: Context) -> ClientEnv:
    """Partition and paths for this message (node config first, then the server's config).

    Raises
    ------
    ConfigError
        The node config has no ``partition-id`` / ``num-partitions``, or no private-state
        directory is known.
    """
    node = context.node_config
    cfg = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    if PARTITION_ID not in node or NUM_PARTITIONS not in node:
        raise ConfigError(
            "node config lacks partition-id/num-partitions; start the SuperNode with "
            '--node-config "partition-id=I num-partitions=N"'
        )
    private_dir = str(node.get(PRIVATE_DIR, "") or cfg.get(PRIVATE_DIR, "") or os.environ.get("LOPA_FED_PRIVATE_DIR", ""))
    if not private_dir:
        raise ConfigError("no private-state directory: set private-dir in the run config or the node config")
    data_dir = str(node.get(DATA_DIR, "") or cfg.get(DATA_DIR, "") or "")
    return ClientEnv(
        partition_id=int(node[PARTITION_ID]),
        num_partitions=int(node[NUM_PARTITIONS]),
        data_dir=data_dir,
        private_dir=private_dir,
        state_tag=str(cfg.get(STATE_TAG, "")),
    )


def received_arrays(message: Message) -> dict[str, np.ndarray]:
    """The global tensors in a message, as numpy arrays (empty for ``federate=none``)."""
    rec = message.content.array_records.get(ARRAYS_KEY)
    return {} if rec is None else {k: v.numpy() for k, v in rec.items()}


def audit_mod(message: Message, context: Context, call_next) -> Message:
    """Client mod: record what actually leaves the client, when ``audit-log`` is set.

    Appends one JSON line per reply: message type, partition, round, the ArrayRecord
    keys and the SHA-256 of each array's raw values (``ndarray.tobytes()``).
    """
    reply = call_next(message, context)
    path = FedSettings.from_run_config(context.run_config).paths.audit_log
    if path and not reply.has_error():
        entry = {
            "type": message.metadata.message_type,
            "partition": context.node_config.get(PARTITION_ID),
            "round": message.content.config_records.get(CONFIG_KEY, ConfigRecord()).get(SERVER_ROUND),
            "time": time.time(),
            "arrays": {
                name: {
                    "sha256": hashlib.sha256(np.ascontiguousarray(arr.numpy()).tobytes()).hexdigest(),
                    "shape": list(arr.shape),
                    "bytes": len(arr.data),
                }
                for rec in reply.content.array_records.values()
                for name, arr in rec.items()
            },
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One O_APPEND write per line, so concurrent clients never interleave a record.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    return reply


app = ClientApp(mods=[audit_mod])


@app.train()
def train(message: Message, context: Context) -> Message:
    """Install the global shared tensors, train locally, reply with the shared tensors only."""
    settings = FedSettings.from_run_config(context.run_config)
    env = client_env(message, context)
    cfg = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    tensors, metrics = local_train(
        settings,
        env,
        received_arrays(message),
        server_round=int(cfg.get(SERVER_ROUND, 0)),
        proximal_mu=float(cfg.get(PROXIMAL_MU, 0.0)),
    )
    arrays = ArrayRecord(tensors) if tensors else ArrayRecord()
    content = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord(metrics)})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Personalised accuracy: this client's private tensors with the global ones, on its local test split."""
    settings = FedSettings.from_run_config(context.run_config)
    env = client_env(message, context)
    metrics = local_evaluate(settings, env, received_arrays(message))
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=message)
