"""End to end on Flower's deployment runtime: a real SuperLink and SuperNodes on 127.0.0.1.

Each message runs in a new ``flwr-clientapp`` process, so private state must come from
disk. The killed-node test (``slow``) SIGKILLs one SuperNode after round 1; Flower marks
it unavailable only after ~50 s, so the run relies on ``min-nodes=1`` and a round timeout.
Every process is stopped by PID in ``deploy_local``'s ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server.launch import deploy_local  # noqa: E402
from server.processes import alive  # noqa: E402

pytestmark = pytest.mark.integration

def test_deployment_two_supernodes_two_rounds(tmp_path, tiny_run_config):
    out = tmp_path / "dep"
    started: list[int] = []
    cfg = tiny_run_config({"round-timeout": 600.0})
    t0 = time.time()
    res = deploy_local(cfg, out, nodes=2, timeout=1200, on_round=lambda rec, procs: started.extend(p.pid for _, p in procs.procs))
    wall = time.time() - t0
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["replied"] == 2 and r["failed"] == 0 and r["eval_replied"] == 2 for r in rounds)
    # Round 2 runs in fresh processes: the heads came back from disk.
    assert (out / "private" / "partition-0-of-2.safetensors").is_file()
    assert started and not [pid for pid in started if alive(pid)]
    print(f"deployment wall time: {wall:.0f}s")


@pytest.mark.slow
def test_killed_supernode_run_completes_with_survivor(tmp_path, tiny_run_config):
    out = tmp_path / "dep-kill"
    killed: list[int] = []

    def on_round(rec, procs):
        if rec["round"] == 1 and not killed:
            pid = procs.pid_of("supernode-1")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cfg = tiny_run_config({"num-server-rounds": 3, "min-nodes": 1, "round-timeout": 90.0})
    res = deploy_local(cfg, out, nodes=2, timeout=1500, on_round=on_round)
    assert killed
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    for r in rounds:
        print({k: r[k] for k in ("round", "sampled", "replied", "failed", "eval_replied", "eval_failed", "seconds")})
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["replied"] == 2
    assert rounds[-1]["replied"] >= 1 and rounds[-1]["acc_mean"] is not None
    assert sum(r["failed"] + r["eval_failed"] for r in rounds[1:]) >= 1 or rounds[-1]["sampled"] == 1
