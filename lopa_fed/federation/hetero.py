"""Heterogeneous fleets: each node may run its own encoder tier, rank and head width.

Only the federated tensors (Zs: m×d, plus the classifier head of a ``classifier`` frozen
model) cross the wire, and their shapes live in the frozen model's space; the encoder and
the u/v heads are private, so they may differ from node to node. A node's settings come
from, in order of precedence:

1. its node config: ``flower-supernode --node-config 'partition-id=0 num-partitions=10
   encoder="minilm-l3" r=1 hidden=128'`` (keys :data:`NODE_KEYS`; TOML values, so strings
   are quoted);
2. the run config's ``tiers`` key, a per-partition mapping in partition order
   (:func:`parse_tiers`): ``"minilm:r=4:n=4,minilm-l3:r=1:n=3,static:r=1:n=3"`` gives
   partitions 0–3 the full MiniLM at rank 4, 4–6 MiniLM-L3 at rank 1, 7–9 the static tier;
3. the run config's own ``encoder``, ``r`` and ``hidden``.

Tiers need ``federate = "zs"`` (or ``"none"``) and a LoPA-family method: other modes or
methods would send tensors whose shapes depend on the encoder. :func:`node_settings` gives
the :class:`~lopa_fed.federation.FedSettings` a node actually runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..tiers import is_tier

if TYPE_CHECKING:  # pragma: no cover
    from .settings import FedSettings

__all__ = [
    "NODE_KEYS", "TIER_ENCODER", "TIER_HIDDEN", "TIER_KEY", "TIER_LABEL", "TIER_R", "TIER_SWITCHED",
    "NodeTier", "TierSpec", "check_tiers", "fleet_size", "node_settings", "node_tier", "parse_tiers",
]

#: Node-config keys a node may set for itself.
NODE_KEYS = ("encoder", "r", "hidden")
#: ``federate`` modes under which nodes may differ (nothing shape-dependent is sent).
HETERO_FEDERATE = ("zs", "none")
#: Key of the ConfigRecord every reply of a ClientApp carries about the node's tier (no tensor),
#: and its fields: tier label (``minilm-l3:r=1``), encoder identity, r, hidden, and the encoder
#: identity it ran before when it switched encoder since its last round (else ``""``).
TIER_KEY = "tier"
TIER_LABEL = "label"
TIER_ENCODER = "encoder"
TIER_R = "r"
TIER_HIDDEN = "hidden"
TIER_SWITCHED = "switched-from"


@dataclass(frozen=True)
class TierSpec:
    """One group of :func:`parse_tiers`: ``count`` consecutive partitions on ``encoder``.

    ``r`` / ``hidden`` ``None`` mean the run's own.
    """

    encoder: str
    r: int | None
    hidden: int | None
    count: int


@dataclass(frozen=True)
class NodeTier:
    """What one node runs: encoder name, rank, head width, and where the choice came from.

    ``source`` is ``"node-config"``, ``"tiers"`` or ``"run-config"``.
    """

    encoder: str
    r: int
    hidden: int
    source: str

    def label(self, run_hidden: int) -> str:
        """``encoder:r=R`` (plus ``:hidden=H`` when it is not the run's), as ``--tiers`` spells it."""
        name = "minilm" if self.encoder == "default" else self.encoder
        return f"{name}:r={self.r}" + (f":hidden={self.hidden}" if self.hidden != run_hidden else "")


def _positive(text: str, what: str, group: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"tiers: {what} in {group!r} must be an integer, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"tiers: {what} in {group!r} must be >= 1, got {value}")
    return value


def parse_tiers(text: str) -> tuple[TierSpec, ...]:
    """Parse ``TIER[:r=R][:hidden=H][:n=N],...`` (``n`` partitions, default 1; empty text: no tiers).

    Raises
    ------
    ConfigError
        An unknown tier, an unknown option, or a non-positive number; the message names the group.
    """
    specs = []
    for group in (g.strip() for g in str(text).split(",")):
        if not group:
            continue
        name, *opts = (p.strip() for p in group.split(":"))
        if not is_tier(name):
            raise ConfigError(f"tiers: unknown encoder tier {name!r} in {group!r}; use minilm, minilm-l<k> or static")
        values: dict[str, int] = {}
        for opt in opts:
            key, sep, val = opt.partition("=")
            if not sep or key not in ("r", "hidden", "n"):
                raise ConfigError(f"tiers: {opt!r} in {group!r} is not r=R, hidden=H or n=COUNT")
            values[key] = _positive(val, key, group)
        specs.append(TierSpec(name.lower(), values.get("r"), values.get("hidden"), values.get("n", 1)))
    return tuple(specs)


def check_tiers(settings: FedSettings) -> None:
    """Refuse ``tiers`` that cannot run with these settings (called by ``FedSettings``).

    Raises
    ------
    ConfigError
        Unparseable tiers, or tiers with a ``federate`` mode or method that sends encoder-shaped tensors.
    """
    if not parse_tiers(settings.tiers):
        return
    check_hetero_allowed(settings, "tiers")
    if getattr(settings.server, "secagg", False):  # clients.secagg's legacy ClientApp does not read node tiers yet
        raise ConfigError("tiers: not supported with secagg = true yet (the SecAgg+ client runs the run's encoder)")


def check_hetero_allowed(settings: FedSettings, where: str) -> None:
    """Raise ConfigError unless nodes may differ in encoder, r and hidden under ``settings``."""
    if settings.federate not in HETERO_FEDERATE:
        raise ConfigError(
            f"{where}: nodes with different encoders need federate = zs or none (federate={settings.federate!r} "
            "would send the private heads, whose shapes depend on the encoder, r and hidden)"
        )
    if not settings.lopa.method.startswith("lopa"):
        raise ConfigError(
            f"{where}: per-node encoders need a LoPA method (lopa, lopa-add, ...); {settings.lopa.method!r} "
            "has no private heads or shares encoder-shaped tensors"
        )


def node_tier(settings: FedSettings, partition_id: int, num_partitions: int, node_config: Mapping[str, Any]) -> NodeTier:
    """The tier of partition ``partition_id`` (node config, then ``tiers``, then the run's settings).

    Raises
    ------
    ConfigError
        ``tiers`` covers a different number of partitions than the run has, a node-config value
        is not a valid encoder / positive integer, or the run does not allow per-node encoders.
    """
    lp = settings.lopa
    tier = NodeTier(settings.encoder, lp.r, lp.hidden, "run-config")
    specs = parse_tiers(settings.tiers)
    if specs:
        total = sum(s.count for s in specs)
        if total != int(num_partitions):
            raise ConfigError(
                f"tiers assigns {total} partitions but the run has {num_partitions} (partition {partition_id}); "
                "make the n= counts add up to the number of clients"
            )
        start = 0
        for spec in specs:
            if start <= partition_id < start + spec.count:
                tier = NodeTier(spec.encoder, spec.r or lp.r, spec.hidden or lp.hidden, "tiers")
                break
            start += spec.count
    own = {k: node_config[k] for k in NODE_KEYS if k in node_config}
    if own:
        check_hetero_allowed(settings, "node config")
        for k in ("r", "hidden"):
            if k in own and (isinstance(own[k], bool) or not isinstance(own[k], int) or own[k] < 1):
                raise ConfigError(f"node config {k}={own[k]!r} must be a positive integer")
        tier = NodeTier(str(own.get("encoder", tier.encoder)), int(own.get("r", tier.r)),
                        int(own.get("hidden", tier.hidden)), "node-config")
    return tier


def node_settings(settings: FedSettings, tier: NodeTier) -> FedSettings:
    """``settings`` with the node's encoder, ``r`` and ``hidden`` (the same object when nothing differs)."""
    lp = settings.lopa
    same_minilm = {tier.encoder, settings.encoder} <= {"default", "minilm"}  # one encoder, two names
    encoder = settings.encoder if same_minilm else tier.encoder
    if (encoder, tier.r, tier.hidden) == (settings.encoder, lp.r, lp.hidden):
        return settings
    lopa = dataclasses.replace(lp, r=tier.r, hidden=tier.hidden)
    return dataclasses.replace(settings, encoder=encoder, lopa=lopa)


def fleet_size(tiers: str | None, given: int | None, default: int = 2) -> int:
    """Number of clients of a launch: ``given``, else the sum of the ``tiers`` counts, else ``default``.

    Raises
    ------
    ConfigError
        ``given`` and the ``tiers`` counts disagree.
    """
    total = sum(s.count for s in parse_tiers(tiers or ""))
    if total and given is not None and int(given) != total:
        raise ConfigError(f"--tiers assigns {total} clients but {given} were asked for; drop one or make them agree")
    return int(given) if given is not None else (total or default)
