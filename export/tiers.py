"""Which encoder tier a federated client ran, read from its private-state files.

In a heterogeneous run (``lopa-fed simulate --tiers ...`` or per-node ``--node-config``) each
client's private-state file records the tier it was made for (metadata ``encoder-name``,
``r``, ``hidden``; see :mod:`clients.state`), and a client that switched encoder has one file
per encoder. :func:`newest_private_files` picks, per partition, the file of the tier the
client ran last (highest round); :func:`client_settings` rebuilds the run's settings with
that tier, so ``lopa-fed export --run DIR --partition I`` exports client I's own encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lopa_fed.errors import CheckpointError
from lopa_fed.federation import FedSettings
from lopa_fed.federation.hetero import NodeTier, node_settings
from lopa_fed.federation.paths import PRIVATE_PATTERN

__all__ = ["client_settings", "newest_private_files", "private_metadata"]


def private_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a private-state file.

    Raises
    ------
    CheckpointError
        Not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc


def _round(path: Path) -> tuple[int, float]:
    try:
        rnd = private_metadata(path).get("round", "")
    except CheckpointError:
        rnd = ""
    return (int(rnd) if rnd.isdigit() else -1, path.stat().st_mtime)


def newest_private_files(paths: Iterable[Path]) -> dict[tuple[int, int], Path]:
    """``{(partition, num_partitions): file}``, the newest round's file where a partition has several (one per tier)."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for p in paths:
        m = PRIVATE_PATTERN.fullmatch(p.name)
        if m:
            groups.setdefault((int(m.group(1)), int(m.group(2))), []).append(p)
    return {key: (files[0] if len(files) == 1 else max(files, key=_round)) for key, files in groups.items()}


def client_settings(settings: FedSettings, private_path: Path | None) -> FedSettings:
    """``settings`` with the encoder, r and hidden recorded in the client's private-state file (if any)."""
    if private_path is None:
        return settings
    meta = private_metadata(private_path)
    name = meta.get("encoder-name")
    if not name:
        return settings  # written before tiers existed: the run's own settings
    lp = settings.lopa
    r, hidden = meta.get("r", ""), meta.get("hidden", "")
    tier = NodeTier(name, int(r) if r.isdigit() else lp.r, int(hidden) if hidden.isdigit() else lp.hidden, "private")
    return node_settings(settings, tier)
