"""What ``train`` writes and shows: ``metrics.json``, per-problem records and the summary table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .. import atomic
from ..provenance import git_state

#: Metric rows shown in the summary table, in order, when the task reports them.
_TABLE_METRICS = ("accuracy", "f1", "mcc", "pass@1", "loss")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its bulky per-problem ``records``."""
    return {k: v for k, v in result.items() if k != "records"}


def run_metrics(task_name: str, model, result: dict, **sections: Any) -> dict:
    """The ``metrics.json`` of a training run: identity, size and speed, then ``sections`` (val, dev, config, ...)."""
    return {
        "task": task_name,
        "method": model.config.method,
        "model": model.frozen.identity,
        "model_kind": model.frozen.kind,
        "encoder": model.encoder.identity if model.encoder is not None else None,
        "trainable_params": model.num_trainable(),
        "train_seconds": result["seconds"],
        "examples_per_second": result["examples_per_second"],
        "train": {k: v for k, v in result.items() if k != "losses"},
        **sections,
        "git_commit": git_state()["commit"],
        "command": "lopa-fed " + " ".join(sys.argv[1:]),
    }


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` atomically."""
    atomic.write_text(path, json.dumps(metrics, indent=2))


def write_records(path: Path, records: list[dict]) -> None:
    """One JSON line per scored problem (uid, completion, generation, status, reason, seconds)."""
    atomic.write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))


def train_table(task_name: str, model, result: dict, scores: dict[str, dict[str, Any]]):
    """The rich summary table of ``lopa-fed train``: size, loss, speed, then each split's metrics."""
    from rich.table import Table

    table = Table(title=f"lopa-fed train: {task_name} / {model.config.method}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("trainable params", f"{model.num_trainable():,}")
    table.add_row("train loss (first → last)", f"{result['first_loss']:.4f} → {result['loss']:.4f}")
    table.add_row("steps", str(result["steps"]))
    table.add_row("train time", f"{result['seconds']:.1f}s ({result['examples_per_second']:.2f} ex/s)")
    for split, res in scores.items():
        for k in _TABLE_METRICS:
            if k in res:
                table.add_row(f"{split} {k}", f"{res[k]:.4f}")
        if "status_counts" in res:
            table.add_row(f"{split} pass / fail / timeout / error", " / ".join(map(str, res["status_counts"].values())))
    return table
