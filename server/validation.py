"""Reply validation before aggregation.

Every train reply is checked against the current global tensors: exactly one
ArrayRecord with exactly the expected keys, shapes and dtypes, all values finite,
an update norm ‖reply − global‖₂ within the configured bound, and exactly one
MetricRecord with the protocol's metric keys and a positive, finite
``num-examples``. A reply that fails is dropped with a reason naming its node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from clients.settings import ARRAYS_KEY, EVAL_METRIC_KEYS, TRAIN_METRIC_KEYS

log = logging.getLogger("flwr.lopa_fed.server")


@dataclass(frozen=True)
class Spec:
    """Expected shape and dtype of one federated tensor."""

    shape: tuple[int, ...]
    dtype: str


@dataclass
class Screened:
    """Replies sorted into ``accepted``, ``rejected`` (invalid content) and ``failed`` (error replies)."""

    accepted: list[Message] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def specs_of(arrays: Mapping[str, np.ndarray]) -> dict[str, Spec]:
    """Specs taken from the global tensors (numpy arrays)."""
    return {k: Spec(tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in arrays.items()}


def _metric_problem(msg: Message, required: frozenset[str], exact: bool) -> str | None:
    metrics = list(msg.content.metric_records.values())
    if len(metrics) != 1:
        return f"expected exactly one MetricRecord, got {len(metrics)}"
    rec = metrics[0]
    keys = set(rec.keys())
    if exact and keys != set(required):
        return f"metric keys {sorted(keys)} differ from the protocol's {sorted(required)}"
    missing = set(required) - keys
    if missing:
        return f"metrics lack {sorted(missing)}"
    for k in keys:
        v = rec[k]
        if isinstance(v, list) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return f"metric {k!r} is not a finite number ({v!r})"
    if not float(rec["num-examples"]) > 0:
        return f"num-examples must be > 0, got {rec['num-examples']!r}"
    return None


def train_reply_problem(
    msg: Message, expected: Mapping[str, Spec], global_arrays: Mapping[str, np.ndarray], max_update_norm: float
) -> str | None:
    """Why a train reply must be dropped, or ``None`` if it is valid.

    Parameters
    ----------
    msg : Message
        A reply without error.
    expected : mapping
        ``{name: Spec}`` of the federated tensors.
    global_arrays : mapping
        The global tensors the reply's update is measured against.
    max_update_norm : float
        Bound on the L2 norm of the update over all tensors (``<= 0``: no bound).
    """
    records = msg.content.array_records
    if len(records) != 1 or ARRAYS_KEY not in records:
        return f"expected exactly one ArrayRecord named {ARRAYS_KEY!r}, got {sorted(records)}"
    rec = records[ARRAYS_KEY]
    keys = set(rec.keys())
    if keys != set(expected):
        extra, missing = sorted(keys - set(expected)), sorted(set(expected) - keys)
        return f"wrong keys (unexpected {extra}, missing {missing})"
    sq = 0.0
    for name, spec in expected.items():
        try:
            arr = rec[name].numpy()
        except Exception as exc:  # noqa: BLE001 - undecodable payload
            return f"{name}: cannot decode array ({exc})"
        if tuple(arr.shape) != spec.shape:
            return f"{name}: shape {tuple(arr.shape)} != expected {spec.shape}"
        if str(arr.dtype) != spec.dtype:
            return f"{name}: dtype {arr.dtype} != expected {spec.dtype}"
        if not np.all(np.isfinite(arr)):
            return f"{name}: contains NaN or Inf"
        diff = arr.astype(np.float64) - np.asarray(global_arrays[name], dtype=np.float64)
        sq += float(np.sum(diff * diff))
    norm = math.sqrt(sq)
    if max_update_norm > 0 and not norm <= max_update_norm:
        return f"update norm {norm:.4g} exceeds max-update-norm {max_update_norm:.4g}"
    return _metric_problem(msg, TRAIN_METRIC_KEYS, exact=True)


def screen_train_replies(
    replies: Iterable[Message],
    expected: Mapping[str, Spec],
    global_arrays: Mapping[str, np.ndarray],
    max_update_norm: float,
) -> Screened:
    """Sort train replies; every drop is logged with the node id and the reason."""
    out = Screened()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
            log.warning("train reply from node %d failed: %s", node, reason)
            out.failed.append((node, reason))
            continue
        problem = train_reply_problem(msg, expected, global_arrays, max_update_norm)
        if problem is None:
            out.accepted.append(msg)
        else:
            log.warning("dropping train reply from node %d: %s", node, problem)
            out.rejected.append((node, problem))
    return out


def screen_eval_replies(replies: Iterable[Message]) -> Screened:
    """Sort evaluate replies (metrics only); drops are logged with the node id and reason."""
    out = Screened()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
            log.warning("evaluate reply from node %d failed: %s", node, reason)
            out.failed.append((node, reason))
            continue
        problem = _metric_problem(msg, EVAL_METRIC_KEYS, exact=True)
        if problem is None:
            out.accepted.append(msg)
        else:
            log.warning("dropping evaluate reply from node %d: %s", node, problem)
            out.rejected.append((node, problem))
    return out
