"""A NaN attacker is dropped and the run completes; ε of server-side DP lands in rounds.json.

3 clients on real MiniLM and a tiny slice of real SST-2: partition 0 sends all-NaN tensors
(the ``attack`` research knob), FedAvg with server-side DP (clip 0.5, σ = 1). Run once through
the real ServerApp loop and ClientApp in-process (:class:`server.testing.InProcessGrid`) and
once in Flower's simulation runtime (``server.launch.simulate``, marked slow: it starts a
SuperLink and Ray workers).
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.app import app  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from server.loop import run_federation  # noqa: E402
from server.privacy import epsilon  # noqa: E402
from server.testing import InProcessGrid  # noqa: E402

pytestmark = pytest.mark.integration

CFG = {
    "num-server-rounds": 2, "local-steps": 1, "batch-size": 4, "pool-size": 60, "max-test-examples": 4,
    "max-length": 64, "min-nodes": 3, "round-timeout": 300.0,
    "attack": "nan", "attackers": "0", "dp-clip": 0.5, "dp-noise": 1.0, "dp-delta": 1e-5,
}


def _check(out, rounds):
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["sampled"] == 3 and r["replied"] == 2 and r["rejected"] == 1 and r["failed"] == 0, r
        assert "NaN" in r["rejected_reasons"][0]["reason"]
        assert r["global_updated"] and r["eval_replied"] == 3
    on_disk = json.loads((out / "rounds.json").read_text())
    eps = [r["dp"]["epsilon"] for r in on_disk]
    # two of the three sampled clients were averaged: effective noise multiplier 1.0 * 2/3
    assert on_disk[0]["dp"]["effective_noise_multiplier"] == pytest.approx(2 / 3)
    assert eps[0] == pytest.approx(epsilon([(2 / 3, 1.0)], 1e-5)[0])
    assert eps[1] == pytest.approx(epsilon([(2 / 3, 1.0)] * 2, 1e-5)[0]) and eps[1] > eps[0]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["privacy"]["epsilon"] == pytest.approx(eps[1])


def test_nan_attacker_dropped_and_epsilon_recorded_in_process(tmp_path):
    out = tmp_path / "run"
    s = FedSettings.from_run_config({**CFG, "output-dir": str(out)})
    grid = InProcessGrid({50 + i: (app, {"partition-id": i, "num-partitions": 3}) for i in range(3)}, s.to_run_config())
    res = run_federation(grid, s)
    _check(out, res["rounds"])


@pytest.mark.slow
def test_nan_attacker_dropped_and_epsilon_recorded_in_flower_simulation(tmp_path):
    from server.launch import simulate

    out = tmp_path / "sim"
    res = simulate(CFG, out, num_clients=3, timeout=900)
    log = res.logs["flwr-run"].read_text()
    assert res.returncode == 0 and res.completed, log[-3000:]
    _check(out, res.rounds)
