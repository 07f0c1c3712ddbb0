"""The privacy cost of server-side DP runs: ε at a stated δ, per round, from Opacus' RDP accountant.

With ``dp-clip = C > 0`` the strategy is wrapped in Flower's
``DifferentialPrivacyServerSideFixedClipping``: every accepted client update ``Δᵢ`` is clipped
to ``‖Δᵢ‖₂ ≤ C``, the clipped updates are averaged, and Gaussian noise of standard deviation
``σ·C/n`` is added to the average (``σ`` = ``dp-noise``, ``n`` = the number of sampled clients
the wrapper was configured with). That is central DP at the **client level** (DP-FedAvg,
McMahan et al. 2018): neighbouring datasets differ in one client's whole data.

One round is one release of the sampled Gaussian mechanism with

* noise multiplier ``z = σ·Σw / (n·max w)`` over the accepted replies' weights ``w``
  (``num-examples``): the weighted mean's sensitivity is ``C·max w/Σw``, so with ``n`` equal
  weights ``z = σ``; fewer accepted replies, or unequal weights, mean less effective noise;
* sampling rate ``q = sampled / available nodes`` (``fraction-train``; ``q = 1`` when every
  client trains each round).

:class:`PrivacyLedger` composes the rounds' RDP curves (orders
``opacus.accountants.RDPAccountant.DEFAULT_ALPHAS`` and :data:`EXTRA_ORDERS`) and converts to ``(ε, δ)`` at ``dp-delta``.
With ``q = 1`` this is the plain Gaussian mechanism composed ``T`` times (no amplification
assumed). With ``q < 1`` the accountant assumes Poisson sampling of clients; Flower samples a
fixed number without replacement, so ``q < 1`` values are the usual approximation, not a proof.
The guarantee holds for mean aggregation (``fedavg``, ``fedprox``; ``fedadam`` post-processes the
noisy mean); for ``fedmedian``, ``fedtrimmedavg`` and ``krum`` the noise is not calibrated to
their sensitivity and no ε is reported (``epsilon: null``). Training and evaluation metrics
that clients send are not covered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("flwr.lopa_fed.server")

#: Strategies whose aggregate is a (weighted) mean of the clipped updates, or post-processes it.
MEAN_STRATEGIES = ("fedavg", "fedprox", "fedadam")
#: RDP orders added to Opacus' defaults (whose largest is 63).
EXTRA_ORDERS = (80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0)
ACCOUNTANT = "opacus RDPAccountant (sampled Gaussian mechanism, add/remove-one client)"


def epsilon(events: Iterable[tuple[float, float]], delta: float) -> tuple[float, float]:
    """``(ε, best RDP order)`` of composing sampled Gaussian releases at ``delta``.

    Parameters
    ----------
    events : iterable of (noise_multiplier, sample_rate)
        One pair per release; ``noise_multiplier > 0``, ``0 < sample_rate <= 1``.
    delta : float
        Target δ.

    Returns
    -------
    (float, float)
        ε (0 without events; ``inf`` if a release had no noise) and the RDP order that gave it.
    """
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for z, q in events:
        if not z > 0:
            return float("inf"), float("nan")
        acc.step(noise_multiplier=float(z), sample_rate=float(q))
    if not acc.history:
        return 0.0, float("nan")
    # Opacus' default orders (1.1 … 63) plus larger ones, which give tighter bounds for large noise
    orders = [*RDPAccountant.DEFAULT_ALPHAS, *EXTRA_ORDERS]
    eps, order = acc.get_privacy_spent(delta=float(delta), alphas=orders)
    return float(eps), float(order)


def effective_noise_multiplier(noise_multiplier: float, num_sampled: int, weights: Sequence[float]) -> float:
    """``σ·Σw/(n·max w)``: the noise multiplier of a round relative to its weighted mean's sensitivity."""
    if not weights:
        return float(noise_multiplier)
    w = [float(x) for x in weights]
    return float(noise_multiplier) * sum(w) / (int(num_sampled) * max(w))


@dataclass
class PrivacyLedger:
    """The rounds' DP releases and their cumulative ε (see the module docstring).

    Attributes
    ----------
    strategy : str
        Inner strategy name; ε is reported only for :data:`MEAN_STRATEGIES`.
    noise_multiplier, clipping_norm : float
        ``dp-noise`` σ and ``dp-clip`` C.
    num_sampled : int
        ``n`` in the noise standard deviation ``σ·C/n`` (the DP wrapper's ``num_sampled_clients``).
    delta : float
        ``dp-delta``.
    events : list of (float, float)
        ``(effective noise multiplier, sampling rate)`` of every release so far.
    """

    strategy: str
    noise_multiplier: float
    clipping_norm: float
    num_sampled: int
    delta: float
    events: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Any, num_sampled: int, previous: Sequence[Mapping[str, Any]] = ()) -> PrivacyLedger | None:
        """A ledger for a run (``None`` without DP); on resume, ``previous`` round records are replayed."""
        cfg = settings.server
        if not cfg.dp_clip > 0:
            return None
        ledger = cls(cfg.strategy, float(cfg.dp_noise), float(cfg.dp_clip), int(num_sampled), float(cfg.dp_delta))
        for rec in previous:
            dp = rec.get("dp") or {}
            if dp.get("released"):
                ledger.events.append((float(dp["effective_noise_multiplier"]), float(dp["sample_rate"])))
        return ledger

    @property
    def accounted(self) -> bool:
        """Whether ε means anything for this strategy and noise."""
        return self.strategy in MEAN_STRATEGIES and self.noise_multiplier > 0

    def account(self, sampled: int, available: int, weights: Sequence[float], released: bool) -> dict[str, Any]:
        """Add a round and return its ``dp`` entry for ``rounds.json``.

        Parameters
        ----------
        sampled, available : int
            Clients sent a train message, and nodes connected (``q = sampled / available``).
        weights : sequence of float
            ``num-examples`` of the accepted train replies (what was averaged).
        released : bool
            Whether a new (noised) global was published this round.
        """
        q = min(1.0, sampled / available) if available else 1.0
        z = effective_noise_multiplier(self.noise_multiplier, self.num_sampled, weights)
        if released:
            self.events.append((z, q))
        entry: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "effective_noise_multiplier": z,
            "clipping_norm": self.clipping_norm,
            "noise_std": self.noise_multiplier * self.clipping_norm / self.num_sampled,
            "sample_rate": q,
            "released": bool(released),
            "releases": len(self.events),
            "delta": self.delta,
            "epsilon": None,
            "rdp_order": None,
            "accountant": ACCOUNTANT,
        }
        if not self.accounted:
            entry["note"] = (f"no epsilon: strategy {self.strategy!r} is not a mean of the clipped updates"
                             if self.noise_multiplier > 0 else "no epsilon: dp-noise is 0 (clipping only, no DP)")
            return entry
        eps, order = epsilon(self.events, self.delta)
        entry.update(epsilon=eps, rdp_order=order)
        log.info("[lopa-fed] DP: epsilon %.4g at delta %g after %d release(s) (z %.4g, q %.3g)",
                 eps, self.delta, len(self.events), z, q)
        return entry


def summary_line(dp: Mapping[str, Any] | None) -> str | None:
    """One line for the run summary from the last round's ``dp`` entry (``None`` without DP)."""
    if not dp:
        return None
    head = (f"server-side DP: σ = {dp['noise_multiplier']:g}, clip C = {dp['clipping_norm']:g}, "
            f"q = {dp['sample_rate']:.3g}, {dp['releases']} release(s)")
    if dp.get("epsilon") is None:
        return f"{head}; {dp.get('note', 'no epsilon')}"
    return f"{head}: ε = {dp['epsilon']:.3f} at δ = {dp['delta']:g} (client-level, {ACCOUNTANT})"
