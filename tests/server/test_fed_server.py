"""Server round loop: FedAvg correctness, reply validation, all-bad rounds, resume, strategies.

Clients here are stand-ins on an in-process Grid that reply with crafted tensors, so the
expected aggregate can be computed independently. The server builds the real model
(MiniLM from the installed package) once to learn the federated names and shapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from lopa_fed.checkpoint import load_tensors  # noqa: E402
from lopa_fed.federation import TRAIN_METRIC_KEYS, FedSettings  # noqa: E402
from server.loop import run_federation  # noqa: E402
from server.strategy import build_strategy  # noqa: E402
from server.testing import InProcessGrid, ensure_task_identity  # noqa: E402
from server.validation import Spec, train_reply_problem  # noqa: E402

ensure_task_identity()

EVAL = {"accuracy": 0.5, "score": 0.5, "eval-loss": 0.7, "partition-id": 0, "model-loads": 1, "private-restored": 1}


def _rec(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _metrics(n: int) -> dict:
    m = {k: 0.0 for k in TRAIN_METRIC_KEYS}
    m.update({"num-examples": n, "train-loss": 0.5, "steps": 1, "model-loads": 1})
    return m


def fake_client(n: int, delta: float, corrupt: str = "", seed: int = 0):
    """A client that replies global + a seeded perturbation scaled by ``delta`` (optionally corrupted)."""
    rng = np.random.default_rng(seed)

    def fn(msg: Message, ctx) -> Message:
        if msg.metadata.message_type == "evaluate":
            ev = dict(EVAL, **{"num-examples": 10, "partition-id": int(ctx.node_config["partition-id"])})
            return Message(RecordDict({"metrics": MetricRecord(ev)}), reply_to=msg)
        glob = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        out = {k: (v + delta * rng.standard_normal(v.shape)).astype(np.float32) for k, v in glob.items()}
        key = sorted(out)[0] if out else ""
        if corrupt == "nan":
            out[key] = out[key].copy()
            out[key].flat[0] = np.nan
        elif corrupt == "shape":
            out[key] = np.zeros((3, 3), dtype=np.float32)
        elif corrupt == "extra":
            out["prompt.u_head.1.weight"] = np.zeros((256, 384), dtype=np.float32)
        elif corrupt == "norm":
            out[key] = out[key] + 1e6
        elif corrupt == "dtype":
            out[key] = out[key].astype(np.float64)
        elif corrupt == "raise":
            raise RuntimeError("client crashed")
        fn.sent.append(out)
        return Message(RecordDict({"arrays": _rec(out), "metrics": MetricRecord(_metrics(n))}), reply_to=msg)

    fn.sent = []
    return fn


def _settings(tmp_path: Path, **kw) -> FedSettings:
    base = dict(num_server_rounds=1, output_dir=str(tmp_path / "out"), min_nodes=1, max_update_norm=100.0)
    base.update(kw)
    return FedSettings.of(**base)


def _grid(clients: list, settings: FedSettings) -> InProcessGrid:
    return InProcessGrid(
        {100 + i: (fn, {"partition-id": i, "num-partitions": len(clients)}) for i, fn in enumerate(clients)},
        settings.to_run_config(),
    )


def _global(out: Path, rnd: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_tensors(out / "global" / f"round-{rnd:03d}.safetensors").items()}


def test_fedavg_is_example_weighted_mean(tmp_path):
    s = _settings(tmp_path)
    clients = [fake_client(30, 0.1, seed=1), fake_client(10, 0.1, seed=2), fake_client(60, 0.1, seed=3)]
    res = run_federation(_grid(clients, s), s)
    got = _global(tmp_path / "out", 1)
    weights = np.array([30, 10, 60], dtype=np.float64)
    for k in got:
        stack = np.stack([c.sent[0][k].astype(np.float64) for c in clients])
        want = np.tensordot(weights / weights.sum(), stack, axes=1)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
    rec = res["rounds"][0]
    assert rec["replied"] == 3 and rec["failed"] == 0 and rec["rejected"] == 0 and rec["global_updated"]
    assert set(res["federated"]) == {"prompt.zs", "head.weight", "head.bias"}
    assert rec["bytes_up"] == rec["bytes_up_train"] > 3 * 4 * 4610  # three replies of 4610 float32 + headers
    assert rec["bytes_down"] == 2 * rec["bytes_down_train"]  # train + evaluate messages carry the globals


@pytest.mark.parametrize("corrupt", ["nan", "shape", "extra", "norm", "dtype"])
def test_bad_update_is_rejected_and_aggregate_uses_good_replies_only(tmp_path, corrupt, caplog):
    s = _settings(tmp_path)
    good = [fake_client(20, 0.1, seed=1), fake_client(40, 0.1, seed=2)]
    bad = fake_client(1000, 0.1, corrupt=corrupt, seed=3)
    with caplog.at_level("WARNING", logger="flwr.lopa_fed.server"):
        res = run_federation(_grid([*good, bad], s), s)
    got = _global(tmp_path / "out", 1)
    w = np.array([20, 40], dtype=np.float64)
    for k in got:
        want = np.tensordot(w / w.sum(), np.stack([c.sent[0][k] for c in good]).astype(np.float64), axes=1)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
    rec = res["rounds"][0]
    assert rec["replied"] == 2 and rec["rejected"] == 1
    assert rec["rejected_reasons"][0]["node"] == 102
    assert "node 102" in caplog.text
    saved = json.loads((tmp_path / "out" / "rounds.json").read_text())
    assert saved[0]["rejected"] == 1


def test_all_bad_round_keeps_globals(tmp_path):
    s = _settings(tmp_path, num_server_rounds=2)
    clients = [fake_client(10, 0.1, corrupt="nan", seed=1), fake_client(10, 0.1, corrupt="raise", seed=2)]
    res = run_federation(_grid(clients, s), s)
    g0, g1, g2 = (_global(tmp_path / "out", r) for r in (0, 1, 2))
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k])
        np.testing.assert_array_equal(g0[k], g2[k])
    rec = res["rounds"][0]
    assert rec["replied"] == 0 and rec["rejected"] == 1 and rec["failed"] == 1 and not rec["global_updated"]
    assert "client crashed" in rec["failed_reasons"][0]["reason"]


def test_resume_continues_from_last_round(tmp_path):
    s = _settings(tmp_path, num_server_rounds=1)
    run_federation(_grid([fake_client(10, 0.1, seed=1)], s), s)
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    g1 = _global(tmp_path / "out", 1)
    c = fake_client(10, 0.0, seed=2)  # replies exactly what it receives
    s2 = _settings(tmp_path, num_server_rounds=3, resume=True)
    grid = _grid([c], s2)
    res = run_federation(grid, s2)
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    first_sent = grid.sent[0]
    assert first_sent.content["config"]["state-tag"] == state["state-tag"]
    for k, v in first_sent.content["arrays"].items():
        np.testing.assert_array_equal(v.numpy(), g1[k])
    assert json.loads((tmp_path / "out" / "state.json").read_text())["last-round"] == 3


def test_federate_none_sends_no_bytes(tmp_path):
    s = _settings(tmp_path, federate="none")
    res = run_federation(_grid([fake_client(10, 0.1, seed=1)], s), s)
    rec = res["rounds"][0]
    assert res["federated"] == [] and rec["bytes_up"] == 0 and rec["bytes_down"] == 0 and rec["replied"] == 1


def test_validation_spec_checks():
    ensure_task_identity()
    spec = {"a": Spec((2,), "float32")}
    glob = {"a": np.zeros(2, dtype=np.float32)}
    src = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type="train")
    ok = Message(
        RecordDict({"arrays": _rec({"a": np.ones(2, np.float32)}), "metrics": MetricRecord(_metrics(3))}),
        reply_to=src,
    )
    assert train_reply_problem(ok, spec, glob, 10.0) is None
    assert "exceeds" in train_reply_problem(ok, spec, glob, 1.0)
    no_n = Message(
        RecordDict({"arrays": _rec({"a": np.ones(2, np.float32)}), "metrics": MetricRecord({"x": 1.0})}),
        reply_to=src,
    )
    assert "metric keys" in train_reply_problem(no_n, spec, glob, 10.0)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
def test_strategies_by_name_and_dp_wrapper(tmp_path, name):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    s = _settings(tmp_path, strategy=name)
    assert type(build_strategy(s)).__name__.lower() == name
    dp = build_strategy(_settings(tmp_path, strategy=name, dp_clip=1.0, dp_noise=0.5), num_nodes=4)
    assert isinstance(dp, DifferentialPrivacyServerSideFixedClipping) and dp.num_sampled_clients == 4


@pytest.mark.parametrize("name", ["fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"])
@pytest.mark.parametrize("dp", [False, True])
def test_strategy_runs_rounds(tmp_path, name, dp):
    """Every strategy (and the server-side DP wrapper) goes through the same loop and yields finite globals."""
    extra = dict(dp_clip=1.0, dp_noise=0.1) if dp else {}
    s = _settings(tmp_path, strategy=name, num_server_rounds=2, **extra)
    clients = [fake_client(10, 0.1, seed=1), fake_client(20, 0.1, seed=2), fake_client(30, 0.1, seed=3)]
    grid = _grid(clients, s)
    res = run_federation(grid, s)
    assert all(r["global_updated"] and r["replied"] == 3 for r in res["rounds"])
    g0, g2 = _global(tmp_path / "out", 0), _global(tmp_path / "out", 2)
    assert all(np.all(np.isfinite(v)) for v in g2.values())
    assert any(not np.array_equal(g0[k], g2[k]) for k in g0)
    if name == "fedprox":
        assert grid.sent[0].content["config"]["proximal-mu"] == s.server.proximal_mu
