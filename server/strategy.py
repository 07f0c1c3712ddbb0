"""Strategies from ``flwr.serverapp.strategy`` by name, optionally wrapped for server-side DP."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from lopa_fed.errors import ConfigError
from lopa_fed.federation import ARRAYS_KEY, CONFIG_KEY, STRATEGIES, FedSettings


def build_strategy(settings: FedSettings, num_nodes: int | None = None) -> Strategy:
    """The strategy named by ``settings.server.strategy``.

    Parameters
    ----------
    settings : FedSettings
        Uses ``settings.server``: ``strategy``, ``fraction-train``/``-evaluate``, ``min-nodes``
        (as min train, evaluate and available nodes), ``proximal-mu``, ``server-lr``,
        ``trim-beta``, ``krum-malicious`` and the DP settings.
    num_nodes : int, optional
        Connected nodes at start; with ``fraction-train`` it gives the number of sampled
        clients that the DP wrapper needs (default: ``min-nodes``).

    Returns
    -------
    Strategy
        With ``dp-clip > 0`` it is wrapped in ``DifferentialPrivacyServerSideFixedClipping``.
    """
    cfg = settings.server
    name = cfg.strategy.lower()
    common: dict[str, Any] = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes,
        min_available_nodes=cfg.min_nodes,
        weighted_by_key="num-examples",
        arrayrecord_key=ARRAYS_KEY,
        configrecord_key=CONFIG_KEY,
    )
    strategy: Strategy
    if name == "fedavg":
        strategy = FedAvg(**common)
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=cfg.proximal_mu)
    elif name == "fedadam":
        strategy = FedAdam(**common, eta=cfg.server_lr)
    elif name == "fedmedian":
        strategy = FedMedian(**common)
    elif name == "fedtrimmedavg":
        strategy = FedTrimmedAvg(**common, beta=cfg.trim_beta)
    elif name == "krum":
        strategy = Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    else:  # pragma: no cover - ServerConfig validates the name
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if cfg.dp_clip > 0:
        sampled = max(int((num_nodes or cfg.min_nodes) * cfg.fraction_train), cfg.min_nodes)
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=cfg.dp_noise,
            clipping_norm=cfg.dp_clip,
            num_sampled_clients=sampled,
        )
    return strategy
