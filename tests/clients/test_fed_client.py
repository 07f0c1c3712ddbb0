"""ClientApp on real MiniLM and real SST-2 (tiny slice): privacy on the wire, private state, import budget.

One federation (2 clients × 2 rounds, federate=zs) runs on an in-process Grid that hands
each message to the real ``clients.app:app`` (mods included) and keeps the exact reply
Messages it returns. ``clients.local.fit`` is wrapped to record each client's private
tensors right before and after local training.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import clients.local as local  # noqa: E402
from clients.app import app  # noqa: E402
from clients.state import PrivateStore  # noqa: E402
from lopa_fed import weights  # noqa: E402
from lopa_fed.checkpoint import load_tensors  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from server.loop import run_federation  # noqa: E402
from server.testing import InProcessGrid  # noqa: E402

pytestmark = pytest.mark.integration

TINY = dict(pool_size=120, local_steps=2, max_test_examples=8, batch_size=8, num_server_rounds=2, min_nodes=2)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fedclient")
    s = FedSettings.of(output_dir=str(tmp / "out"), audit_log=str(tmp / "audit.jsonl"), **TINY)
    grid = InProcessGrid({50 + i: (app, {"partition-id": i, "num-partitions": 2}) for i in range(2)}, s.to_run_config())
    snaps: list[dict] = []
    real_fit = local.fit

    def recording_fit(model, data, config, **kw):
        fed = set(local.federated_names(model.roles(), s.federate))
        names = [n for n in model.named_trainable() if n not in fed]
        before = {k: v.numpy().copy() for k, v in model.state(names).items()}
        res = real_fit(model, data, config, **kw)
        after = {k: v.numpy().copy() for k, v in model.state(names).items()}
        snaps.append({"seed": config.seed, "before": before, "after": after})
        return res

    mp = pytest.MonkeyPatch()
    mp.setattr(local, "fit", recording_fit)
    try:
        result = run_federation(grid, s)
    finally:
        mp.undo()
    return {"settings": s, "grid": grid, "snaps": snaps, "result": result, "tmp": tmp}


def _partition_of_seed(s: FedSettings, seed: int) -> tuple[int, int]:
    """Invert ``seed = run_seed + 1009·round + partition`` (see clients.local.local_train)."""
    off = seed - s.seed
    return off % 1009, off // 1009


def test_train_replies_carry_no_private_tensor(fed_run):
    s, grid, snaps = fed_run["settings"], fed_run["grid"], fed_run["snaps"]
    model = local.new_model(s)
    private = set(model.private_names())
    assert private, "LoPA must have private heads"
    train_replies = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train_replies) == 4 and not any(m.has_error() for m in train_replies)
    private_values = [v for snap in snaps for part in ("before", "after") for v in snap[part].values()]
    private_hashes = {_sha(v) for v in private_values}
    for msg in train_replies:
        for rec in msg.content.array_records.values():
            assert not (set(rec.keys()) & private), f"private key on the wire: {set(rec.keys()) & private}"
            assert set(rec.keys()) == {"prompt.zs", "head.weight", "head.bias"}
            for name, arr in rec.items():
                value = arr.numpy()
                assert _sha(value) not in private_hashes, name
                assert not any(v.shape == value.shape and np.array_equal(v, value) for v in private_values), name
    # The audit mod saw the same outgoing arrays (it hashes what leaves the client).
    lines = [json.loads(x) for x in (fed_run["tmp"] / "audit.jsonl").read_text().splitlines()]
    sent = [e for e in lines if e["type"] == "train"]
    assert len(sent) == 4
    for e in sent:
        assert not set(e["arrays"]) & private
        assert not {a["sha256"] for a in e["arrays"].values()} & private_hashes


def test_private_state_restored_unchanged_across_rounds(fed_run):
    s, snaps = fed_run["settings"], fed_run["snaps"]
    by_key = {_partition_of_seed(s, snap["seed"]): snap for snap in snaps}
    assert set(by_key) == {(0, 1), (1, 1), (0, 2), (1, 2)}
    for pid in (0, 1):
        r1, r2 = by_key[(pid, 1)], by_key[(pid, 2)]
        assert any(not np.array_equal(r1["before"][k], r1["after"][k]) for k in r1["after"]), "heads must train"
        for k in r1["after"]:
            np.testing.assert_array_equal(r2["before"][k], r1["after"][k])
        # The file holds the round-2 heads (evaluation does not touch it).
        store = PrivateStore(Path(s.paths.output_dir) / "private", pid, 2)
        saved = load_tensors(store.path)
        for k, v in r2["after"].items():
            np.testing.assert_array_equal(saved[k].numpy(), v)
        assert store.metadata()["round"] == "2"


def test_private_state_restored_after_restart(fed_run):
    """A new process (as in deployment, one per message) restores the same heads from disk."""
    s, snaps = fed_run["settings"], fed_run["snaps"]
    state_tag = json.loads((Path(s.paths.output_dir) / "state.json").read_text())["state-tag"]
    expected = {_partition_of_seed(s, x["seed"]): x for x in snaps}[(0, 2)]["after"]
    code = (
        "import json, hashlib, numpy as np\n"
        "from lopa_fed.federation import FedSettings, new_model\n"
        "from clients.local import ClientEnv, prepare\n"
        f"s = FedSettings.from_run_config(json.loads({json.dumps(json.dumps(s.to_run_config()))}))\n"
        f"env = ClientEnv(0, 2, '', {str(Path(s.paths.output_dir) / 'private')!r}, {state_tag!r})\n"
        "m0 = new_model(s)\n"
        "received = {k: v.numpy() for k, v in m0.state(['prompt.zs', 'head.weight', 'head.bias']).items()}\n"
        "model, fed, restored = prepare(s, env, received)\n"
        "st = model.state(model.private_names())\n"
        "print(json.dumps({'restored': restored, 'sha': {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in st.items()}}))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["restored"] is True
    assert got["sha"] == {k: _sha(v) for k, v in expected.items()}


def test_stale_private_state_is_not_restored(fed_run, tmp_path):
    s = fed_run["settings"]
    env = local.ClientEnv(0, 2, "", str(Path(s.paths.output_dir) / "private"), "another-run")
    m0 = local.new_model(s)
    received = {k: v.numpy() for k, v in m0.state(["prompt.zs", "head.weight", "head.bias"]).items()}
    _, _, restored = local.prepare(s, env, received)
    assert restored is False


def test_round_metrics_and_import_budget(fed_run):
    rounds = fed_run["result"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["replied"] == 2 and r["failed"] == 0 and r["eval_replied"] == 2
        assert 0.0 <= r["acc_min"] <= r["acc_mean"] <= r["acc_max"] <= 1.0
        assert r["model_loads_max"] == 1
    # server + both clients share one MiniLM load in this process (other tests may have loaded other models)
    minilm = [n for k, n in weights.LOAD_COUNTS.items() if k.startswith("sentence-transformers/all-MiniLM-L6-v2|")]
    assert minilm == [1]
    assert (Path(fed_run["settings"].paths.output_dir) / "rounds.png").stat().st_size > 1000


def test_fedprox_proximal_term_adds_mu_times_drift(fed_run):
    import torch

    model = local.new_model(fed_run["settings"])
    zs = model.named_trainable()["prompt.zs"]
    with local.proximal_term(model, ["prompt.zs"], mu=0.5):
        with torch.no_grad():
            zs.add_(2.0)  # drift from the received global value
        (zs * 0.0).sum().backward()
    torch.testing.assert_close(zs.grad, torch.full_like(zs, 1.0))
    zs.grad = None
    (zs * 0.0).sum().backward()  # hooks removed on exit
    torch.testing.assert_close(zs.grad, torch.zeros_like(zs))
