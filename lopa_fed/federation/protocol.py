"""The wire protocol between the ServerApp and the ClientApp (plain Python, no Flower types).

Every message carries at most three records, each under a fixed key:

* ``ARRAYS_KEY``: an ArrayRecord with the federated tensors (:func:`federated_names`),
  server → client (the current globals) and client → server (the locally trained copy);
* ``CONFIG_KEY``: a ConfigRecord, server → client, with :data:`STATE_TAG`,
  :data:`PRIVATE_DIR` and :data:`DATA_DIR` (and Flower's :data:`SERVER_ROUND`,
  plus :data:`PROXIMAL_MU` under FedProx);
* ``METRICS_KEY``: a MetricRecord, client → server, with exactly
  :data:`TRAIN_METRIC_KEYS` or :data:`EVAL_METRIC_KEYS`.

The server drops a reply that deviates from this (``server.validation``); the client
refuses received tensors that are not exactly the federated names
(:class:`ProtocolError`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError, LoPAError

__all__ = [
    "ACCURACY",
    "ARRAYS_KEY",
    "CONFIG_KEY",
    "DATA_DIR",
    "EVAL_METRIC_KEYS",
    "FEDERATE_MODES",
    "METRICS_KEY",
    "NUM_PARTITIONS",
    "PARTITION_ID",
    "PRIVATE_DIR",
    "PROXIMAL_MU",
    "ProtocolError",
    "SERVER_ROUND",
    "STATE_TAG",
    "TRAIN_METRIC_KEYS",
    "federated_names",
    "reported_metric",
]

#: Record keys of every message.
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"

#: ConfigRecord keys the server sends (the first three are ours, the last two Flower's strategies').
STATE_TAG = "state-tag"
PRIVATE_DIR = "private-dir"
DATA_DIR = "data-dir"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
#: Node-config keys naming a client's partition (set by the simulation runtime, or by
#: ``flower-supernode --node-config "partition-id=I num-partitions=N"``).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

#: Exact metric keys of a train reply (the server rejects replies with other keys).
TRAIN_METRIC_KEYS = frozenset(
    {
        "num-examples",
        "train-loss",
        "first-loss",
        "steps",
        "seconds",
        "partition-id",
        "model-loads",
        "private-restored",
    }
)
#: Exact metric keys of an evaluate reply. ``accuracy`` is what :func:`reported_metric` names
#: (accuracy, or pass@1 for tasks without labels); ``score`` is the task's headline metric.
EVAL_METRIC_KEYS = frozenset(
    {"num-examples", "accuracy", "score", "eval-loss", "partition-id", "model-loads", "private-restored"}
)
#: The evaluate-reply key the server averages into ``acc_mean`` / ``acc_min`` / ``acc_max``.
ACCURACY = "accuracy"

#: ``federate`` modes (see :func:`federated_names`).
FEDERATE_MODES = ("zs", "zs+heads", "all", "none")


class ProtocolError(LoPAError, ValueError):
    """A message does not follow the protocol (e.g. server and client disagree on ``federate``)."""


def federated_names(roles: Mapping[str, str], federate: str) -> list[str]:
    """Names of the tensors a ``federate`` mode sends, in the model's stable order.

    Parameters
    ----------
    roles : mapping
        ``PromptedModel.roles()``: ``{name: "shared" | "private"}``.
    federate : str
        ``zs``: the method's shared tensors (LoPA/PT: ``prompt.zs``; IDPG: the generator;
        LoRA: the adapters; plus the classifier head ``head.*`` when the frozen model has one).
        ``zs+heads``: the shared tensors and the private prompt heads. ``all``: every trainable
        tensor. ``none``: nothing (local-only training).

    Returns
    -------
    list of str

    Raises
    ------
    ConfigError
        ``federate`` is not one of :data:`FEDERATE_MODES`.
    """
    if federate not in FEDERATE_MODES:
        raise ConfigError(f"federate: unknown {federate!r}; choose one of {', '.join(FEDERATE_MODES)}")
    if federate == "none":
        return []
    if federate == "all":
        return list(roles)
    if federate == "zs+heads":
        return [n for n, r in roles.items() if r == "shared" or n.startswith("prompt.")]
    return [n for n, r in roles.items() if r == "shared"]


def reported_metric(task) -> str:
    """Name of the metric an evaluate reply carries under :data:`ACCURACY` for ``task``.

    Tasks with class labels report ``accuracy``; tasks without (code) report their headline
    metric (``pass@1``) there.
    """
    return "accuracy" if task.num_labels else task.defaults.metric
