"""Per-tier figures of a round: which encoder tier each client ran, and accuracy per tier.

Each ClientApp reply carries a ConfigRecord under :data:`~lopa_fed.federation.hetero.TIER_KEY`
(no tensor: the tier label, encoder identity, r, hidden, and the encoder it ran before when
it switched). The server never needs it to aggregate (every reply carries the same federated
tensors in the frozen model's space, validated as always); it only sorts the round's figures
by tier. :func:`add_tiers` adds to a ``rounds.json`` record::

    "per_tier": {"minilm:r=4": {"acc_mean", "acc_min", "acc_max", "clients", "num_examples",
                                "train_replied", "encoder", "r", "hidden"}, ...}
    "per_client": {"3": {..., "tier": "static:r=1"}}
    "tier_switches": [{"partition": 3, "from": "<identity>", "to": "<identity>"}]

:func:`plot_tier_curves` draws one accuracy curve per tier on the rounds plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Message

from lopa_fed.federation import ACCURACY
from lopa_fed.federation.hetero import TIER_ENCODER, TIER_HIDDEN, TIER_KEY, TIER_LABEL, TIER_R, TIER_SWITCHED

__all__ = ["UNKNOWN", "add_tiers", "plot_tier_curves", "print_tier_summary", "tier_of"]

#: Label of a reply that carries no (valid) tier record.
UNKNOWN = "unknown"
_MAX_LABEL = 120


def tier_of(msg: Message) -> dict[str, Any]:
    """The tier record of a reply as a dict (``label`` is :data:`UNKNOWN` when absent or malformed)."""
    rec = msg.content.config_records.get(TIER_KEY)
    if rec is None:
        return {TIER_LABEL: UNKNOWN}
    out = {k: rec.get(k) for k in (TIER_LABEL, TIER_ENCODER, TIER_R, TIER_HIDDEN, TIER_SWITCHED)}
    label = out.get(TIER_LABEL)
    if not isinstance(label, str) or not label or len(label) > _MAX_LABEL:
        out[TIER_LABEL] = UNKNOWN
    return out


def _metrics(msg: Message) -> Any:
    return next(iter(msg.content.metric_records.values()))


def add_tiers(record: dict[str, Any], train: Iterable[Message], evaluate: Iterable[Message]) -> dict[str, Any]:
    """Add ``per_tier``, each ``per_client`` entry's ``tier`` and ``tier_switches`` to a round record.

    Parameters
    ----------
    record : dict
        The round's record (:func:`server.loop.round_record`), changed in place and returned.
    train, evaluate : iterable of Message
        The round's *accepted* train and evaluate replies.
    """
    groups: dict[str, dict[str, Any]] = {}
    switches = []
    for msg in train:
        t, m = tier_of(msg), _metrics(msg)
        g = groups.setdefault(t[TIER_LABEL], _group(t))
        g["train_replied"] += 1
        if t.get(TIER_SWITCHED):
            switches.append({"partition": int(m["partition-id"]), "from": t[TIER_SWITCHED], "to": t.get(TIER_ENCODER)})
    for msg in evaluate:
        t, m = tier_of(msg), _metrics(msg)
        g = groups.setdefault(t[TIER_LABEL], _group(t))
        g["_acc"].append(float(m[ACCURACY]))
        g["_n"].append(float(m["num-examples"]))
        client = record.get("per_client", {}).get(str(int(m["partition-id"])))
        if client is not None:
            client["tier"] = t[TIER_LABEL]
    per_tier = {}
    for label in sorted(groups):
        g = groups[label]
        acc, n = g.pop("_acc"), g.pop("_n")
        mean = float(np.average(acc, weights=n)) if acc else None  # example-weighted, as server.metrics
        per_tier[label] = {"acc_mean": mean, "acc_min": min(acc, default=None), "acc_max": max(acc, default=None),
                           "clients": len(acc), "num_examples": int(sum(n)), **g}
    record["per_tier"] = per_tier
    record["tier_switches"] = switches
    return record


def _group(t: dict[str, Any]) -> dict[str, Any]:
    return {"encoder": t.get(TIER_ENCODER), "r": t.get(TIER_R), "hidden": t.get(TIER_HIDDEN),
            "train_replied": 0, "_acc": [], "_n": []}


def plot_tier_curves(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    """One dashed accuracy curve per tier (weighted mean over its clients) on ``ax``; nothing for one tier."""
    labels = sorted({label for r in records for label in (r.get("per_tier") or {})} - {UNKNOWN})
    if len(labels) < 2:
        return
    rounds = [int(r["round"]) for r in records]
    for label in labels:
        ys = []
        for r in records:
            v = (r.get("per_tier") or {}).get(label, {}).get("acc_mean")
            ys.append(float("nan") if v is None else float(v))
        if not all(math.isnan(y) for y in ys):
            ax.plot(rounds, ys, linestyle="--", marker=".", label=f"tier {label}")


def print_tier_summary(console: Any, rounds: Sequence[dict[str, Any]]) -> None:
    """A rich table of the last round's accuracy per tier (nothing when the clients ran one tier)."""
    last = (rounds[-1].get("per_tier") or {}) if rounds else {}
    if len(set(last) - {UNKNOWN}) < 2:
        return
    from rich.table import Table

    t = Table(title=f"per encoder tier, round {rounds[-1]['round']}")
    for col in ("tier", "encoder", "clients", "acc", "min", "max"):
        t.add_column(col, justify="left" if col in ("tier", "encoder") else "right")
    for label, g in last.items():
        def f(x: Any) -> str:
            return "–" if x is None else f"{x:.3f}"

        t.add_row(label, str(g.get("encoder") or "?"), str(g.get("clients")), f(g.get("acc_mean")),
                  f(g.get("acc_min")), f(g.get("acc_max")))
    console.print(t)
