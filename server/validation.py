"""Reply validation before aggregation, as a strategy wrapper (:class:`ReplyValidation`).

Every train reply is checked against the current global tensors: exactly one
ArrayRecord with exactly the expected keys, shapes and dtypes, all values finite,
an update norm ‖reply − global‖₂ within the configured bound, and exactly one
MetricRecord with the protocol's metric keys and a positive, finite
``num-examples``. A reply that fails is dropped with a reason naming its node.
Evaluate replies are checked for their metrics. The checks are pure functions
(:func:`train_reply_problem`, :func:`screen_train_replies`, ...); the wrapper applies
them in ``aggregate_train`` / ``aggregate_evaluate`` the way Flower's
``DifferentialPrivacyServerSideFixedClipping`` applies clipping, so any strategy only
ever sees valid replies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lopa_fed.federation import ARRAYS_KEY, EVAL_METRIC_KEYS, TRAIN_METRIC_KEYS

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
    msg: Message,
    expected: Mapping[str, Spec],
    global_arrays: Mapping[str, np.ndarray],
    max_update_norm: float,
    *,
    arrayrecord_key: str = ARRAYS_KEY,
    metric_keys: frozenset[str] = TRAIN_METRIC_KEYS,
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
    arrayrecord_key, metric_keys
        The protocol: the ArrayRecord's key and the exact metric keys.
    """
    records = msg.content.array_records
    if len(records) != 1 or arrayrecord_key not in records:
        return f"expected exactly one ArrayRecord named {arrayrecord_key!r}, got {sorted(records)}"
    rec = records[arrayrecord_key]
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
    return _metric_problem(msg, metric_keys, exact=True)


def screen_train_replies(
    replies: Iterable[Message],
    expected: Mapping[str, Spec],
    global_arrays: Mapping[str, np.ndarray],
    max_update_norm: float,
    **protocol: object,
) -> Screened:
    """Sort train replies; every drop is logged with the node id and the reason.

    ``protocol`` (``arrayrecord_key``, ``metric_keys``) goes to :func:`train_reply_problem`.
    """
    out = Screened()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
            log.warning("train reply from node %d failed: %s", node, reason)
            out.failed.append((node, reason))
            continue
        problem = train_reply_problem(msg, expected, global_arrays, max_update_norm, **protocol)
        if problem is None:
            out.accepted.append(msg)
        else:
            log.warning("dropping train reply from node %d: %s", node, problem)
            out.rejected.append((node, problem))
    return out


def screen_eval_replies(replies: Iterable[Message], metric_keys: frozenset[str] = EVAL_METRIC_KEYS) -> Screened:
    """Sort evaluate replies (metrics only); drops are logged with the node id and reason."""
    out = Screened()
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
            log.warning("evaluate reply from node %d failed: %s", node, reason)
            out.failed.append((node, reason))
            continue
        problem = _metric_problem(msg, metric_keys, exact=True)
        if problem is None:
            out.accepted.append(msg)
        else:
            log.warning("dropping evaluate reply from node %d: %s", node, problem)
            out.rejected.append((node, problem))
    return out


def checked_aggregate(arrays: ArrayRecord | None, expected: Mapping[str, Spec]) -> dict[str, np.ndarray] | None:
    """The aggregate as numpy arrays in the expected dtypes, or ``None`` if its keys, shapes or values are wrong.

    Server-side optimisers (FedAdam) may return float64; the arrays are cast back to the model's dtypes.
    """
    if arrays is None:
        return None
    new = {k: v.numpy().astype(expected[k].dtype) if k in expected else v.numpy() for k, v in arrays.items()}
    if specs_of(new) != dict(expected) or not all(np.all(np.isfinite(v)) for v in new.values()):
        return None
    return new


class ReplyValidation(Strategy):
    """Strategy wrapper: the wrapped strategy aggregates only replies that pass validation.

    Parameters
    ----------
    strategy : Strategy
        The strategy to wrap (it may itself be a wrapper, e.g. server-side DP, which then
        clips valid updates only).
    expected : mapping
        ``{name: Spec}`` of the federated tensors.
    max_update_norm : float
        Bound on a reply's update norm ‖reply − global‖₂ (``<= 0``: none).
    arrayrecord_key : str
        Key of the ArrayRecord in replies.
    train_metric_keys, eval_metric_keys : frozenset of str
        The exact metric keys of train and evaluate replies.

    Attributes
    ----------
    train_screens, eval_screens : dict of int to Screened
        Per round, which replies were accepted, rejected (with the node and reason) or failed.
    """

    def __init__(
        self,
        strategy: Strategy,
        expected: Mapping[str, Spec],
        max_update_norm: float,
        *,
        arrayrecord_key: str = ARRAYS_KEY,
        train_metric_keys: frozenset[str] = TRAIN_METRIC_KEYS,
        eval_metric_keys: frozenset[str] = EVAL_METRIC_KEYS,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.expected = dict(expected)
        self.max_update_norm = float(max_update_norm)
        self.arrayrecord_key = arrayrecord_key
        self.train_metric_keys = train_metric_keys
        self.eval_metric_keys = eval_metric_keys
        self.current: dict[str, np.ndarray] = {}
        self.train_screens: dict[int, Screened] = {}
        self.eval_screens: dict[int, Screened] = {}

    def __repr__(self) -> str:
        return f"ReplyValidation({self.strategy!r})"

    def summary(self) -> None:
        """Log the validation settings, then the wrapped strategy's summary."""
        log.info("\t├──> Reply validation: %d tensors, max update norm %s", len(self.expected), self.max_update_norm)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the globals (updates are measured against them), then let the wrapped strategy configure."""
        self.current = {k: v.numpy() for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies; aggregate the valid ones; return ``(None, None)`` if there is nothing valid.

        An aggregate with wrong keys, shapes or non-finite values is discarded (logged).
        """
        screened = screen_train_replies(
            replies, self.expected, self.current, self.max_update_norm,
            arrayrecord_key=self.arrayrecord_key, metric_keys=self.train_metric_keys,
        )
        self.train_screens[server_round] = screened
        if not screened.accepted or not self.expected:
            if self.expected:
                log.warning("round %d: no valid train reply; global tensors unchanged", server_round)
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, screened.accepted)
        new = checked_aggregate(arrays, self.expected)
        if arrays is not None and new is None:
            log.warning(
                "round %d: aggregate has wrong keys/shapes or non-finite values; globals unchanged", server_round
            )
        out = None if new is None else ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        return out, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Screen the evaluate replies; the wrapped strategy aggregates the valid ones."""
        screened = screen_eval_replies(replies, self.eval_metric_keys)
        self.eval_screens[server_round] = screened
        if not screened.accepted:
            return None
        return self.strategy.aggregate_evaluate(server_round, screened.accepted)
