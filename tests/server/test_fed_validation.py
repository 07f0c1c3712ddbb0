"""``ReplyValidation``: a strategy wrapper (like Flower's DP wrapper) that lets the wrapped strategy see valid replies only."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from lopa_fed.federation import ARRAYS_KEY, METRICS_KEY, TRAIN_METRIC_KEYS
from server.testing import ensure_task_identity
from server.validation import ReplyValidation, specs_of

ensure_task_identity()


class Recording(FedAvg):
    """FedAvg that remembers which replies it was asked to aggregate."""

    def __init__(self) -> None:
        super().__init__(weighted_by_key="num-examples", arrayrecord_key=ARRAYS_KEY)
        self.seen: list[int] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = [int(m.metadata.src_node_id) for m in replies]
        return super().aggregate_train(server_round, replies)


def _reply(node: int, value: np.ndarray, n: int = 10) -> Message:
    src = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
    metrics = {k: 0.0 for k in TRAIN_METRIC_KEYS} | {"num-examples": n}
    content = RecordDict({ARRAYS_KEY: ArrayRecord({"zs": Array(value)}), METRICS_KEY: MetricRecord(metrics)})
    return Message(content, reply_to=src)


def test_wrapper_screens_before_the_wrapped_strategy_aggregates():
    glob = {"zs": np.zeros((2, 3), dtype=np.float32)}
    inner = Recording()
    strategy = ReplyValidation(inner, specs_of(glob), max_update_norm=10.0)
    strategy.current = glob  # what configure_train records
    good = [_reply(1, np.full((2, 3), 1.0, np.float32), 10), _reply(2, np.full((2, 3), 4.0, np.float32), 30)]
    bad = [_reply(3, np.full((2, 3), np.nan, np.float32)), _reply(4, np.full((2, 3), 100.0, np.float32))]
    arrays, _ = strategy.aggregate_train(1, [*good, *bad])
    assert inner.seen == [1, 2]
    np.testing.assert_allclose(arrays["zs"].numpy(), np.full((2, 3), 3.25, np.float32))
    assert arrays["zs"].numpy().dtype == np.float32
    screened = strategy.train_screens[1]
    assert [n for n, _ in screened.rejected] == [3, 4]
    assert "NaN" in screened.rejected[0][1] and "max-update-norm" in screened.rejected[1][1]


def test_wrapper_returns_nothing_when_no_reply_is_valid():
    glob = {"zs": np.zeros(2, dtype=np.float32)}
    inner = Recording()
    strategy = ReplyValidation(inner, specs_of(glob), max_update_norm=0.0)
    strategy.current = glob
    assert strategy.aggregate_train(1, [_reply(5, np.zeros(3, np.float32))]) == (None, None)
    assert inner.seen == [] and "shape" in strategy.train_screens[1].rejected[0][1]
