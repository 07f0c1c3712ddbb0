"""SecAgg+ (``secagg = true``): 3 clients × 2 rounds of real MiniLM on SST-2.

The same checks run twice: in-process (default suite: Flower's real ``SecAggPlusWorkflow`` and
``secaggplus_mod`` with our ClientApp, delivered by :class:`server.testing.InProcessGrid`) and on
Flower's simulation runtime through ``simulate`` (``slow``: ~75 s, most of it Flower's start-up).
Each run checks the three claims of secure aggregation:

* the aggregate equals exact FedAvg of the clients' Zs (kept by each client's audit log) within
  the quantization error bound the server records;
* what the server received from each client (its masked vector, kept in
  ``OUT/secagg/round-NNN-masked.npz``) is what that client's audit log says it sent, and is not
  its Zs: dequantized, it is uncorrelated noise;
* in round 2 partition 2 drops out during training (test hook ``LOPA_FED_TEST_DROP``); with
  3 shares and threshold 2 the round still completes with the two survivors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import types

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import Context, RecordDict  # noqa: E402

from clients.app import app as client_app  # noqa: E402
from lopa_fed.checkpoint import load_tensors  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from server.launch import complete_run_config, simulate  # noqa: E402
from server.secagg import run_secagg  # noqa: E402
from server.testing import InProcessGrid  # noqa: E402

pytestmark = pytest.mark.integration

CFG = {
    "num-server-rounds": 2,
    "local-steps": 1,
    "batch-size": 8,
    "pool-size": 90,
    "max-test-examples": 4,
    "min-nodes": 2,
    "round-timeout": 120.0,
    "secagg": True,
}


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


class _Grid(InProcessGrid):
    """The in-process Grid with the ``run`` the legacy client manager asks for."""

    @property
    def run(self):
        return types.SimpleNamespace(run_id=1)

    def send_and_receive(self, messages, *, timeout=None):
        # A transport gives every node its own copy; SecAgg+ sends one content object to all of them.
        return super().send_and_receive([copy.deepcopy(m) for m in messages], timeout=timeout)


def test_secagg_in_process_mean_masking_and_dropout(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPA_FED_TEST_DROP", "2:2")
    out, audit = tmp_path / "sa", tmp_path / "audit.jsonl"
    cfg = complete_run_config(dict(CFG, **{"audit-log": str(audit), "private-dir": str(out / "private")}), out)
    settings = FedSettings.from_run_config(cfg)
    nodes = {100 + i: (client_app, {"partition-id": i, "num-partitions": 3}) for i in range(3)}
    grid = _Grid(nodes, cfg)
    run_secagg(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg), settings)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    check_secagg_run(out, audit)


@pytest.mark.slow
def test_secagg_simulation_mean_masking_and_dropout(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPA_FED_TEST_DROP", "2:2")
    out, audit = tmp_path / "sa", tmp_path / "audit.jsonl"
    res = simulate(dict(CFG, **{"audit-log": str(audit)}), out, num_clients=3, timeout=600)
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    check_secagg_run(out, audit)


def check_secagg_run(out, audit):
    """The three claims, from rounds.json, the globals, the server's masked vectors and the client audit log."""
    r1, r2 = json.loads((out / "rounds.json").read_text())
    assert (r1["sampled"], r1["replied"], r1["failed"]) == (3, 3, 0)
    assert (r2["sampled"], r2["replied"], r2["failed"]) == (3, 2, 1) and r2["global_updated"]
    assert "LOPA_FED_TEST_DROP" in r2["failed_reasons"][0]["reason"]
    assert r1["acc_mean"] is not None and r2["eval_replied"] == 3
    assert [s["stage"] for s in r1["secagg"]["stages"]] == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
    entries = [json.loads(x) for x in audit.read_text().splitlines()]
    plain = [e for e in entries if e["stage"] == "plaintext"]
    assert sorted((e["round"], e["partition"]) for e in plain) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    run = json.loads((out / "run.json").read_text())
    names = run["federated"]
    for rec in (r1, r2):
        rnd = rec["round"]
        mine = [e for e in plain if e["round"] == rnd]
        assert all(e["clipped"] == 0 for e in mine)
        zs = [dict(np.load(e["values"])) for e in mine]
        n = np.array([e["num_examples"] for e in mine], dtype=np.float64)
        g = load_tensors(out / "global" / f"round-{rnd:03d}.safetensors")
        bound = rec["secagg"]["error_bound"]
        assert 0 < bound < 1e-4
        for name in names:
            fedavg = sum(w * z[name].astype(np.float64) for w, z in zip(n, zs)) / n.sum()
            assert np.max(np.abs(g[name].numpy() - fedavg)) <= bound, name
        # What each client says it sent is exactly what the server received ...
        sent = {e["bytes_values"]["secaggplus_configs/masked_params"]["sha256"] for e in entries
                if e["sent"] and e["round"] == rnd and e["stage"] == "collect_masked_vectors"}
        assert sent == set(rec["secagg"]["masked_sha256"].values()) and len(sent) == len(mine)
        # ... and it is not the client's Zs: no digest matches, and the values look like noise.
        masked = np.load(out / "secagg" / f"round-{rnd:03d}-masked.npz")
        plain_digests = {v["sha256"] for e in mine for v in e["arrays"].values()}
        assert not {_sha(masked[k]) for k in masked.files} & plain_digests
        for node in rec["secagg"]["masked_sha256"]:
            vec = masked[f"node-{node}-1"].astype(np.float64).ravel() * 16 / 2**22 - 8  # as if unmasked
            best = max(abs(np.corrcoef(vec, z[names[0]].ravel())[0, 1]) for z in zs)
            assert best < 0.1 and np.mean(np.abs(vec)) > 1e3
    # Private tensors never left a client, by name or by value.
    private = {n for n, r in run["roles"].items() if r == "private"}
    private_hashes = {_sha(t.numpy()) for f in (out / "private").iterdir() for t in load_tensors(f).values()}
    for e in (e for e in entries if e["sent"]):
        assert not set(e["arrays"]) & private
        assert not {v["sha256"] for v in e["arrays"].values()} & private_hashes
