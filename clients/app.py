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

import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lopa_fed.federation import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PARTITION_ID,
    PROXIMAL_MU,
    SERVER_ROUND,
    FedSettings,
)
from lopa_fed.federation.hetero import TIER_KEY

from .attack import attack_reply
from .audit import append_entry, digest, env_of
from .hetero import node_context
from .local import ClientEnv, local_evaluate, local_train
from .secagg import secagg_route_mod


def client_env(message: Message, context: Context) -> ClientEnv:
    """Partition and paths for this message (node config first, then the server's config).

    Raises
    ------
    ConfigError
        The node config has no ``partition-id`` / ``num-partitions``, or no private-state
        directory is known.
    """
    return env_of(context.node_config, message.content.config_records.get(CONFIG_KEY, ConfigRecord()))


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
                name: {**digest(arr.numpy()), "bytes": len(arr.data)}
                for rec in reply.content.array_records.values()
                for name, arr in rec.items()
            },
        }
        append_entry(path, entry)
    return reply


# secagg = true runs are served by the legacy SecAgg+ ClientApp (clients.secagg).
app = ClientApp(mods=[secagg_route_mod, audit_mod])


@app.train()
def train(message: Message, context: Context) -> Message:
    """Install the global shared tensors, train locally, reply with the shared tensors only."""
    settings = FedSettings.from_run_config(context.run_config)
    env = client_env(message, context)
    settings, tier = node_context(settings, env, context.node_config, train=True)  # this node's encoder tier
    cfg = message.content.config_records.get(CONFIG_KEY, ConfigRecord())
    received = received_arrays(message)
    server_round = int(cfg.get(SERVER_ROUND, 0))
    tensors, metrics = local_train(
        settings,
        env,
        received,
        server_round=server_round,
        proximal_mu=float(cfg.get(PROXIMAL_MU, 0.0)),
    )
    tensors = attack_reply(settings, env.partition_id, received, tensors, server_round)  # research knob; off by default
    arrays = ArrayRecord(tensors) if tensors else ArrayRecord()
    content = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord(metrics), TIER_KEY: ConfigRecord(tier)})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Personalised accuracy: this client's private tensors with the global ones, on its local test split."""
    settings = FedSettings.from_run_config(context.run_config)
    env = client_env(message, context)
    settings, tier = node_context(settings, env, context.node_config, train=False)
    metrics = local_evaluate(settings, env, received_arrays(message))
    content = RecordDict({METRICS_KEY: MetricRecord(metrics), TIER_KEY: ConfigRecord(tier)})
    return Message(content=content, reply_to=message)
