"""The ClientApp refuses a run config with an unknown key (before loading anything), naming the closest key."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402

from clients.app import app  # noqa: E402
from lopa_fed.federation import ARRAYS_KEY, CONFIG_KEY, SCHEMA  # noqa: E402
from server.testing import InProcessGrid  # noqa: E402


def test_client_app_refuses_unknown_run_config_key(tmp_path):
    run_config = {**SCHEMA.defaults(), "locl-steps": 3}
    grid = InProcessGrid({7: (app, {"partition-id": 0, "num-partitions": 1})}, run_config)
    for kind in ("train", "evaluate"):
        msg = Message(
            RecordDict({ARRAYS_KEY: ArrayRecord(), CONFIG_KEY: ConfigRecord({"private-dir": str(tmp_path)})}),
            dst_node_id=7,
            message_type=kind,
        )
        (reply,) = grid.send_and_receive([msg])
        assert reply.has_error()
        assert "unknown run-config key 'locl-steps'; did you mean 'local-steps'?" in reply.error.reason
