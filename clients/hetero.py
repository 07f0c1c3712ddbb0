"""A node's own encoder tier, rank and head width, and how its replies say which it ran.

:func:`node_run` turns the run's settings into the settings this node runs
(:mod:`lopa_fed.federation.hetero`: node config, then the run config's ``tiers``, then the
run's own ``encoder`` / ``r`` / ``hidden``). Every reply then carries a small ConfigRecord under
:data:`~lopa_fed.federation.hetero.TIER_KEY` (:func:`tier_record`): the tier label, the encoder
identity, r, hidden and, on the first round after a change of encoder, the encoder it ran before.
It holds no tensor; the server uses it for per-tier accuracy in ``rounds.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lopa_fed.federation import FedSettings
from lopa_fed.federation.hetero import (
    TIER_ENCODER,
    TIER_HIDDEN,
    TIER_LABEL,
    TIER_R,
    TIER_SWITCHED,
    NodeTier,
    node_settings,
    node_tier,
)
from lopa_fed.model import PromptedModel
from lopa_fed.tiers import encoder_identity
from lopa_fed.weights import resolve

from .state import PrivateStore

__all__ = ["encoder_of", "node_context", "node_run", "private_meta", "tier_record"]


def node_run(
    settings: FedSettings, partition_id: int, num_partitions: int, node_config: Mapping[str, Any]
) -> tuple[FedSettings, NodeTier]:
    """``(settings this node runs, its tier)`` for partition ``partition_id``.

    Raises
    ------
    ConfigError
        See :func:`lopa_fed.federation.hetero.node_tier`.
    """
    tier = node_tier(settings, int(partition_id), int(num_partitions), node_config)
    return node_settings(settings, tier), tier


def encoder_of(model: PromptedModel) -> str:
    """Identity of ``model``'s instance encoder (``""`` for methods without one)."""
    return model.encoder.identity if model.encoder is not None else ""


def private_meta(settings: FedSettings) -> dict[str, str]:
    """What a private-state file records about the node's tier (export rebuilds the client from it)."""
    return {"encoder-name": str(settings.encoder), "r": str(settings.lopa.r), "hidden": str(settings.lopa.hidden)}


def tier_record(
    run: FedSettings, node: FedSettings, tier: NodeTier, *, private_dir: str = "", partition_id: int = 0,
    num_partitions: int = 1, state_tag: str = "",
) -> dict[str, str | int]:
    """The reply's tier description (the values of its ConfigRecord under ``TIER_KEY``).

    With ``private_dir`` (train messages, called *before* training) the partition's private
    state is read to tell whether the node switched its encoder since its last round
    (``TIER_SWITCHED``: the encoder identity it ran before; ``""`` otherwise).
    """
    frozen = resolve(node.model_name).identity
    identity = encoder_identity(node.encoder, frozen)
    switched = ""
    if private_dir:
        store = PrivateStore(private_dir, partition_id, num_partitions, encoder=identity)
        switched = store.previous_encoder(state_tag) or ""
    return {
        TIER_LABEL: tier.label(run.lopa.hidden),
        TIER_ENCODER: identity,
        TIER_R: int(tier.r),
        TIER_HIDDEN: int(tier.hidden),
        TIER_SWITCHED: switched,
    }


def node_context(
    run: FedSettings, env: Any, node_config: Mapping[str, Any], *, train: bool
) -> tuple[FedSettings, dict[str, str | int]]:
    """``(settings this node runs, its reply's tier record)`` for a message handled with ``env`` (a ClientEnv).

    For train messages the record says whether the encoder changed since the node's last round.
    """
    node, tier = node_run(run, env.partition_id, env.num_partitions, node_config)
    where = dict(private_dir=env.private_dir, partition_id=env.partition_id, num_partitions=env.num_partitions,
                 state_tag=env.state_tag) if train else {}
    return node, tier_record(run, node, tier, **where)
