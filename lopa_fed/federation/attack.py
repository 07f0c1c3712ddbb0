"""Attack simulation settings (a research knob): which partitions misbehave, and how.

**For robustness experiments only.** A deployment never sets these keys: an attacker is a
client that does not run this code. With ``attack = "none"`` (the default) nothing changes.
The client side (``clients/attack.py``) applies the attack to the reply of every partition
listed in ``attackers``:

============  =====================================================================
``attack``    what an attacker partition sends (Δ = its honest update, reply − global)
============  =====================================================================
``signflip``  ``global − attack-scale·Δ`` (sign-flipped, scaled update)
``noise``     ``global + attack-scale·‖Δ‖₂·g/‖g‖₂`` with ``g ~ N(0, I)`` (Gaussian noise
              of the update's norm times the scale)
``labelflip`` its honest update, trained on its local train split with every label
              ``y`` replaced by ``(y + 1) mod K`` (data poisoning; test split untouched)
``nan``       all-NaN tensors (the server's reply validation must drop them)
============  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["ATTACKS", "AttackConfig"]

#: ``attack`` values.
ATTACKS = ("none", "signflip", "noise", "labelflip", "nan")


@dataclass(frozen=True)
class AttackConfig:
    """Simulated attackers (research knob; see the module docstring).

    Attributes
    ----------
    kind : str
        Run-config key ``attack``: one of :data:`ATTACKS`.
    attackers : tuple of str
        Run-config key ``attackers``: comma-separated partition ids, e.g. ``"0,1"``.
    scale : float
        Run-config key ``attack-scale``: norm multiplier of ``signflip`` and ``noise``.
    """

    kind: str = field(default="none", metadata={"help": (
        "RESEARCH KNOB, never for deployments: attack simulated by the partitions in attackers: "
        f"{', '.join(ATTACKS)} (see lopa_fed/federation/attack.py)"
    )})
    attackers: tuple[str, ...] = field(default=(), metadata={"help": (
        "research knob: comma-separated partition ids that attack (empty: none)"
    )})
    scale: float = field(default=10.0, metadata={"help": (
        "research knob: signflip sends global - scale*update; noise sends Gaussian noise of norm scale*||update||"
    )})

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"kind: unknown {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        for part in self.attackers:
            if not part.isdigit():
                raise ConfigError(f"attackers: {part!r} is not a partition id (use e.g. attackers = \"0,1\")")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale!r}")

    @property
    def partitions(self) -> frozenset[int]:
        """Partition ids that attack (empty when ``kind`` is ``"none"``)."""
        if self.kind == "none":
            return frozenset()
        return frozenset(int(p) for p in self.attackers)

    def attacks(self, partition_id: int) -> bool:
        """Whether partition ``partition_id`` runs the attack."""
        return int(partition_id) in self.partitions
