"""Two encoder tiers through the real ClientApp and ServerApp loop (issue 15), in-process.

Real MiniLM and a tiny slice of real SST-2 on :class:`server.testing.InProcessGrid` (the
Flower-runtime version is ``tests/server/test_hetero_sim.py``, marked slow). Round 1: client 0
runs the full MiniLM at r = 4, client 1 the static tier at r = 1 with 64-wide heads. The run is
then resumed for a round with the tiers swapped to minilm-l3 / static, so client 0 switches its
encoder: the switch must be detected (logged, reported in ``rounds.json``) and its old heads
never loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.app import app  # noqa: E402
from lopa_fed.checkpoint import load_tensors  # noqa: E402
from lopa_fed.federation import FedSettings, new_model  # noqa: E402
from lopa_fed.federation.hetero import node_settings, node_tier  # noqa: E402
from server.loop import run_federation  # noqa: E402
from server.testing import InProcessGrid  # noqa: E402

pytestmark = pytest.mark.integration

TINY = dict(pool_size=80, local_steps=1, max_test_examples=4, batch_size=4, min_nodes=2)
FIRST = "minilm:r=4:n=1,static:r=1:hidden=64:n=1"
SWITCHED = "minilm-l3:r=1:n=1,static:r=1:hidden=64:n=1"


def _grid(s: FedSettings) -> InProcessGrid:
    return InProcessGrid({70 + i: (app, {"partition-id": i, "num-partitions": 2}) for i in range(2)}, s.to_run_config())


def _private_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_tensors(path).items()}


def _tier_shapes(s: FedSettings, pid: int) -> dict[str, tuple[int, ...]]:
    model = new_model(node_settings(s, node_tier(s, pid, 2, {})))
    return {n: tuple(model.named_trainable()[n].shape) for n in model.private_names()}


@pytest.fixture(scope="module")
def hetero_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hetero") / "out"
    s1 = FedSettings.of(output_dir=str(out), num_server_rounds=1, tiers=FIRST, **TINY)
    first = run_federation(_grid(s1), s1)
    private = out / "private"
    before = {p.name: _private_shapes(p) for p in private.iterdir()}
    s2 = dataclasses.replace(s1, tiers=SWITCHED, server=dataclasses.replace(s1.server, num_server_rounds=2, resume=True))
    logger = logging.getLogger("flwr.lopa_fed.clients")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        second = run_federation(_grid(s2), s2)
    finally:
        logger.removeHandler(handler)
    return {"out": out, "s1": s1, "s2": s2, "first": first, "second": second, "before": before, "logs": records}


def test_both_tiers_train_and_are_accepted(hetero_run):
    r1 = hetero_run["first"]["rounds"][0]
    assert r1["replied"] == 2 and r1["rejected"] == 0 and r1["failed"] == 0 and r1["eval_replied"] == 2, r1
    assert r1["global_updated"]
    assert set(r1["per_tier"]) == {"minilm:r=4", "static:r=1:hidden=64"}
    assert all(t["train_replied"] == 1 and t["clients"] == 1 for t in r1["per_tier"].values())
    assert r1["per_client"]["1"]["tier"] == "static:r=1:hidden=64"
    assert hetero_run["first"]["federated"] == ["prompt.zs", "head.weight", "head.bias"]


def test_each_client_keeps_its_tiers_shapes(hetero_run):
    s1, before = hetero_run["s1"], hetero_run["before"]
    assert sorted(before) == ["partition-0-of-2.safetensors", "partition-1-of-2.static.safetensors"]
    assert before["partition-0-of-2.safetensors"] == _tier_shapes(s1, 0)
    assert before["partition-1-of-2.static.safetensors"] == _tier_shapes(s1, 1)
    assert before["partition-1-of-2.static.safetensors"]["prompt.u_head.3.weight"] == (10, 64)
    assert before["partition-0-of-2.safetensors"]["prompt.u_head.3.weight"] == (40, 256)


def test_tier_switch_is_detected(hetero_run):
    out, s2 = hetero_run["out"], hetero_run["s2"]
    r2 = hetero_run["second"]["rounds"][-1]
    assert r2["round"] == 2 and r2["replied"] == 2 and r2["rejected"] == 0, r2
    assert r2["tier_switches"] == [{
        "partition": 0, "from": "sentence-transformers/all-MiniLM-L6-v2",
        "to": "sentence-transformers/all-MiniLM-L6-v2@layers=3",
    }]
    assert r2["private_restored"] == 1  # only client 1 (unchanged tier) restored its heads
    assert set(r2["per_tier"]) == {"minilm-l3:r=1", "static:r=1:hidden=64"}
    msgs = [r.getMessage() for r in hetero_run["logs"]]
    assert any("partition 0 switched its instance encoder" in m for m in msgs), msgs
    names = sorted(p.name for p in (out / "private").iterdir())
    assert names == ["partition-0-of-2.minilm-l3.safetensors", "partition-0-of-2.safetensors",
                     "partition-1-of-2.static.safetensors"]
    assert _private_shapes(out / "private" / names[0]) == _tier_shapes(s2, 0)
    # the old full-MiniLM heads were left alone, still round 1
    assert _private_shapes(out / "private" / names[1]) == hetero_run["before"]["partition-0-of-2.safetensors"]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]


def test_export_loads_each_clients_own_tier(hetero_run):
    """``lopa-fed export --run DIR --partition I`` rebuilds client I with the tier it ran last."""
    from export.federated import load_client

    out = hetero_run["out"]
    c0, c1 = load_client(out, 0), load_client(out, 1)
    assert c0.model.encoder.identity.endswith("@layers=3") and c0.model.config.r == 1
    assert c0.source["private"].endswith("partition-0-of-2.minilm-l3.safetensors")
    assert c1.model.encoder.identity.startswith("static@") and (c1.model.config.r, c1.model.config.hidden) == (1, 64)
    assert c1.source["private"].endswith("partition-1-of-2.static.safetensors")
