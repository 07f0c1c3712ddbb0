"""Per-round records: ``rounds.jsonl`` (appended), ``rounds.json`` (rewritten) and ``rounds.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message

from lopa_fed import atomic

ROUNDS_JSONL = "rounds.jsonl"
ROUNDS_JSON = "rounds.json"
PLOT = "rounds.png"


def payload_bytes(messages: Iterable[Message]) -> int:
    """Bytes of the serialised arrays in the messages' ArrayRecords (``len(Array.data)``)."""
    total = 0
    for msg in messages:
        if msg.has_error():
            continue
        for rec in msg.content.array_records.values():
            total += sum(len(arr.data) for arr in rec.values())
    return total


def weighted_stats(values: Sequence[float], weights: Sequence[float]) -> dict[str, float | None]:
    """Example-weighted mean, and min / max / (population) std across clients."""
    if not values:
        return {"mean": None, "min": None, "max": None, "std": None}
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return {
        "mean": float(np.sum(v * w) / np.sum(w)),
        "min": float(v.min()),
        "max": float(v.max()),
        "std": float(v.std()),
    }


class RoundLog:
    """The per-round records of a run in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Output directory.
    keep_until : int, optional
        On resume, keep the existing records of rounds ``<= keep_until``; otherwise start empty.
    """

    def __init__(self, out_dir: Path, keep_until: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if keep_until is not None:
            self.records = [r for r in read_rounds(self.out_dir) if int(r["round"]) <= keep_until]
        self._rewrite_jsonl()

    def _rewrite_jsonl(self) -> None:
        atomic.write_text(self.out_dir / ROUNDS_JSONL, "".join(json.dumps(r) + "\n" for r in self.records))
        atomic.write_text(self.out_dir / ROUNDS_JSON, json.dumps(self.records, indent=2))

    def append(self, record: dict[str, Any]) -> None:
        """Add a round: append to the JSONL, rewrite the JSON, redraw the plot."""
        self.records.append(record)
        with open(self.out_dir / ROUNDS_JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        atomic.write_text(self.out_dir / ROUNDS_JSON, json.dumps(self.records, indent=2))
        plot_rounds(self.records, self.out_dir / PLOT)


def read_rounds(out_dir: Path) -> list[dict[str, Any]]:
    """Records of ``out_dir/rounds.jsonl`` (ignores a torn last line)."""
    p = Path(out_dir) / ROUNDS_JSONL
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_rounds(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy (mean with min–max band) and bytes up/down per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in records]

    rounds = [int(r["round"]) for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    mean, lo, hi = col("acc_mean"), col("acc_min"), col("acc_max")
    metric = records[0].get("metric", "accuracy") if records else "accuracy"
    ax1.plot(rounds, mean, marker="o", label=f"personalised {metric} (weighted mean)")
    if any(not math.isnan(x) for x in lo):
        ax1.fill_between(rounds, lo, hi, alpha=0.2, label="min–max across clients")
    from .tiers import plot_tier_curves  # one curve per encoder tier when clients ran several

    plot_tier_curves(ax1, records)
    ax1.set_xlabel("round")
    ax1.set_ylabel(metric)
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="lower right", fontsize=8)
    ax2.plot(rounds, [b / 1024 for b in col("bytes_up")], marker="o", label="up (client→server)")
    ax2.plot(rounds, [b / 1024 for b in col("bytes_down")], marker="s", label="down (server→client)")
    ax2.set_xlabel("round")
    ax2.set_ylabel("KiB per round")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = records[0].get("label", "") if records else ""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
