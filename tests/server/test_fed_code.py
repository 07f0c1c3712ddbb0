"""Federated code tasks in Flower's simulation runtime, on the real SmolLM2-135M and real CruxEval-O.

2 clients × 2 rounds through ``flwr run`` (the same ClientApp/ServerApp as GLUE): each
client trains LoPA on its share of the train half with the answer-token loss and scores
execution-based pass@1 on its share of the test half in the sandbox.
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.checkpoint import load_tensors  # noqa: E402
from server.launch import simulate  # noqa: E402

pytestmark = pytest.mark.integration


def test_simulate_cruxeval_o_on_smollm2(tmp_path):
    cfg = {
        "task": "cruxeval-o",
        "r": 1,
        "num-server-rounds": 2,
        "local-steps": 2,
        "batch-size": 4,
        "pool-size": 8,
        "max-test-examples": 3,
        "max-new-tokens": 32,
        "min-nodes": 2,
        "round-timeout": 600.0,
    }
    out = tmp_path / "sim"
    res = simulate(cfg, out, num_clients=2, timeout=900)
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["metric"] == "pass@1"
        assert r["replied"] == 2 and r["eval_replied"] == 2 and r["failed"] == r["rejected"] == 0
        assert 0.0 <= r["acc_mean"] <= 1.0 and r["num_eval_examples"] == 6
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["eval_loss"])
        assert r["model_loads_max"] == 1
    run = json.loads((out / "run.json").read_text())
    assert run["federated"] == ["prompt.zs"]
    # SmolLM2 has d = 576; m = 10
    assert tuple(load_tensors(out / "global" / "round-002.safetensors")["prompt.zs"].shape) == (10, 576)
    private = load_tensors(out / "private" / "partition-0-of-2.safetensors")
    assert private and all(k.startswith("prompt.") and k != "prompt.zs" for k in private)
