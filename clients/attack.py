"""Simulated attackers (research knob, :mod:`lopa_fed.federation.attack`): corrupt a train reply.

A partition listed in ``attackers`` trains as usual; then :func:`attack_reply` replaces what
it sends. The transforms are pure functions of the received global tensors ``g`` and the
honestly trained ones ``t`` (update ``Δ = t − g``, its norm taken over all federated tensors
at once):

* :func:`sign_flip`: ``g − s·Δ``;
* :func:`gaussian_noise`: ``g + s·‖Δ‖₂·z/‖z‖₂``, ``z ~ N(0, I)`` (seeded per round and partition);
* :func:`nan_update`: every value NaN;
* :func:`flip_labels` (data poisoning, applied before training by :mod:`clients.local`): label
  ``y`` → ``(y + 1) mod K`` on the attacker's local train split.

Dtypes and shapes are kept, so only the values can give an attacker away.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lopa_fed.federation import FedSettings

log = logging.getLogger("flwr.lopa_fed.clients")

Arrays = dict[str, np.ndarray]


def _numpy(x: Any) -> np.ndarray:
    """A numpy copy of a numpy array or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, copy=True)


def update_of(received: Mapping[str, Any], trained: Mapping[str, Any]) -> Arrays:
    """``{name: t − g}`` in float64, one array per federated tensor (shapes as the tensors')."""
    return {k: _numpy(trained[k]).astype(np.float64) - _numpy(received[k]).astype(np.float64) for k in trained}


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of an update over all its tensors together."""
    return math.sqrt(sum(float(np.sum(np.square(d))) for d in update.values()))


def _rebuild(received: Mapping[str, Any], trained: Mapping[str, Any], delta: Mapping[str, np.ndarray]) -> Arrays:
    """``g + delta`` in each trained tensor's dtype."""
    out = {}
    for k, t in trained.items():
        dtype = _numpy(t).dtype
        out[k] = (_numpy(received[k]).astype(np.float64) + delta[k]).astype(dtype)
    return out


def sign_flip(received: Mapping[str, Any], trained: Mapping[str, Any], scale: float) -> Arrays:
    """``g − scale·(t − g)`` for every tensor.

    Parameters
    ----------
    received : mapping
        ``{name: g}``, the global tensors of this round (any shape).
    trained : mapping
        ``{name: t}``, the honestly trained tensors (same names and shapes).
    scale : float
        Multiplier of the flipped update.
    """
    delta = update_of(received, trained)
    return _rebuild(received, trained, {k: -float(scale) * d for k, d in delta.items()})


def gaussian_noise(
    received: Mapping[str, Any], trained: Mapping[str, Any], scale: float, rng: np.random.Generator
) -> Arrays:
    """``g + scale·‖Δ‖₂·z/‖z‖₂`` with ``z ~ N(0, I)`` over all tensors jointly.

    The honest update is thrown away; what is sent is isotropic noise whose norm is
    ``scale`` times the honest update's norm (0 if the client did not move).
    """
    delta = update_of(received, trained)
    target = float(scale) * update_norm(delta)
    z = {k: rng.standard_normal(d.shape) for k, d in delta.items()}
    zn = update_norm(z)
    factor = target / zn if zn > 0 else 0.0
    return _rebuild(received, trained, {k: factor * v for k, v in z.items()})


def nan_update(trained: Mapping[str, Any]) -> Arrays:
    """Every tensor filled with NaN (same shapes and dtypes)."""
    out = {}
    for k, t in trained.items():
        arr = _numpy(t)
        out[k] = np.full(arr.shape, np.nan, dtype=arr.dtype)
    return out


def flip_labels(examples: Sequence[Any], num_labels: int) -> tuple[Any, ...]:
    """Examples with label ``y`` replaced by ``(y + 1) mod num_labels`` (binary tasks: flipped).

    Examples are frozen dataclasses with a ``label`` field (:class:`lopa_fed.tasks.Example`).
    """
    if num_labels < 2:
        raise ValueError("label flipping needs a task with at least 2 labels")
    return tuple(dataclasses.replace(e, label=(int(e.label) + 1) % num_labels) for e in examples)


def poisoned_train(settings: FedSettings, partition_id: int, train: Sequence[Any]) -> tuple[Any, ...]:
    """The local train examples a partition trains on: label-flipped for a ``labelflip`` attacker."""
    cfg = settings.attack
    if cfg.kind != "labelflip" or not cfg.attacks(partition_id):
        return tuple(train)
    log.warning("partition %d is a simulated labelflip attacker (research knob)", partition_id)
    return flip_labels(train, settings.task_spec.num_labels)


def attack_reply(
    settings: FedSettings,
    partition_id: int,
    received: Mapping[str, Any],
    trained: Mapping[str, Any],
    server_round: int,
) -> Mapping[str, Any]:
    """What partition ``partition_id`` sends back: ``trained`` itself, or its corruption.

    Parameters
    ----------
    settings : FedSettings
        ``settings.attack`` says which partitions attack and how.
    partition_id : int
        This client's partition.
    received, trained : mapping
        Global tensors of the round and the locally trained ones (``{name: array}``).
    server_round : int
        Seeds the noise attack, with the run seed and the partition.
    """
    cfg = settings.attack
    if not trained or not cfg.attacks(partition_id) or cfg.kind == "labelflip":
        return trained
    log.warning("partition %d sends a simulated %s attack in round %d (research knob)", partition_id, cfg.kind,
                server_round)
    if cfg.kind == "signflip":
        out = sign_flip(received, trained, cfg.scale)
    elif cfg.kind == "noise":
        rng = np.random.default_rng([settings.seed, int(server_round), int(partition_id), 7])
        out = gaussian_noise(received, trained, cfg.scale, rng)
    elif cfg.kind == "nan":
        out = nan_update(trained)
    else:  # pragma: no cover - AttackConfig validates the name
        raise ValueError(f"unknown attack {cfg.kind!r}")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}  # as the honest reply: tensors
