"""The federation contract shared by the ClientApp (``clients/``) and the ServerApp (``server/``).

Plain Python, no Flower imports: both apps import it, and neither imports the other.

* :mod:`~lopa_fed.federation.schema`: the run-config schema (keys, TOML types, defaults;
  unknown keys refused with the closest known key);
* :mod:`~lopa_fed.federation.settings`: :class:`FedSettings` (LoPAConfig + TrainConfig +
  the federation-only sections), parsed from a run config, and :func:`new_model`;
* :mod:`~lopa_fed.federation.sections`: :class:`DataConfig`, :class:`ServerConfig`,
  :class:`PathsConfig`;
* :mod:`~lopa_fed.federation.protocol`: record keys, metric keys, ``federate`` modes and
  :func:`federated_names`;
* :mod:`~lopa_fed.federation.paths`: absolute paths of a run.
"""

from __future__ import annotations

from .attack import ATTACKS, AttackConfig
from .paths import RunPaths, absolute, run_paths
from .protocol import (
    ACCURACY,
    ARRAYS_KEY,
    CONFIG_KEY,
    DATA_DIR,
    EVAL_METRIC_KEYS,
    FEDERATE_MODES,
    METRICS_KEY,
    NUM_PARTITIONS,
    PARTITION_ID,
    PRIVATE_DIR,
    PROXIMAL_MU,
    SERVER_ROUND,
    STATE_TAG,
    TRAIN_METRIC_KEYS,
    ProtocolError,
    federated_names,
    reported_metric,
)
from .schema import Key, RunConfigSchema
from .sections import BAD_PRIVATE_STATE, PARTITIONERS, STRATEGIES, DataConfig, PathsConfig, ServerConfig
from .settings import SCHEMA, FedSettings, new_model

__all__ = [
    "ACCURACY",
    "ATTACKS",
    "BAD_PRIVATE_STATE",
    "ARRAYS_KEY",
    "CONFIG_KEY",
    "DATA_DIR",
    "EVAL_METRIC_KEYS",
    "FEDERATE_MODES",
    "METRICS_KEY",
    "NUM_PARTITIONS",
    "PARTITIONERS",
    "PARTITION_ID",
    "PRIVATE_DIR",
    "PROXIMAL_MU",
    "SCHEMA",
    "SERVER_ROUND",
    "STATE_TAG",
    "STRATEGIES",
    "TRAIN_METRIC_KEYS",
    "AttackConfig",
    "DataConfig",
    "FedSettings",
    "Key",
    "PathsConfig",
    "ProtocolError",
    "RunConfigSchema",
    "RunPaths",
    "ServerConfig",
    "absolute",
    "federated_names",
    "new_model",
    "reported_metric",
    "run_paths",
]
