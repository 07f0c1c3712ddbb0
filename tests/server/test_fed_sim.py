"""End to end in Flower's simulation runtime: ``flwr run`` against a private SuperLink.

2 clients × 2 rounds on real MiniLM and a tiny slice of real SST-2. Checks rounds.json,
the PNG, per-round globals, the wire audit (no private key or value left a client) and
that every process the launch started is gone afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.checkpoint import load_tensors  # noqa: E402
from server.launch import simulate  # noqa: E402
from server.processes import alive  # noqa: E402

pytestmark = pytest.mark.integration

def test_flwr_run_simulation_end_to_end(tmp_path, tiny_run_config):
    out = tmp_path / "sim"
    started: list[int] = []

    def on_round(rec, procs):
        started.extend(p.pid for _, p in procs.procs)

    cfg = tiny_run_config({"audit-log": str(tmp_path / "audit.jsonl")})
    res = simulate(cfg, out, num_clients=2, timeout=900, on_round=on_round)
    log = res.logs["flwr-run"].read_text()
    assert res.returncode == 0 and res.completed, log[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["replied"] == 2 and r["failed"] == 0 and r["rejected"] == 0
        assert r["acc_mean"] is not None and r["bytes_up"] > 0 and r["bytes_down"] > r["bytes_up"]
        assert r["model_loads_max"] == 1  # one MiniLM load per worker process, not per round
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 2
    assert (out / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    g = load_tensors(out / "global" / "round-002.safetensors")
    assert set(g) == {"prompt.zs", "head.weight", "head.bias"}
    run = json.loads((out / "run.json").read_text())
    private = {n for n, r in run["roles"].items() if r == "private"}
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len([a for a in audit if a["type"] == "train"]) == 4
    assert all(not (set(a["arrays"]) & private) for a in audit)
    # By value too: no outgoing array equals a private tensor a client saved.
    private_hashes = {
        hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()
        for f in (out / "private").iterdir()
        for t in load_tensors(f).values()
    }
    assert len(private_hashes) == 2 * len(private)
    assert not {v["sha256"] for a in audit for v in a["arrays"].values()} & private_hashes
    assert sorted(p.name for p in (out / "private").iterdir()) == [
        "partition-0-of-2.safetensors",
        "partition-1-of-2.safetensors",
    ]
    assert started and not [pid for pid in started if alive(pid)]
