"""Two encoder tiers in one federation, in Flower's simulation runtime (issue 15).

2 clients × 2 rounds on real MiniLM and a tiny slice of real SST-2: client 0 runs the full
MiniLM at rank 4, client 1 the static tier (the frozen model's token embeddings, no
transformer) at rank 1 with narrower heads. Both replies must be accepted every round,
``rounds.json`` must report each tier, and each client's private file must hold its own
tier's shapes.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.checkpoint import load_tensors  # noqa: E402
from lopa_fed.federation import FedSettings, new_model  # noqa: E402
from lopa_fed.federation.hetero import node_settings, node_tier  # noqa: E402
from server.launch import simulate  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~90 s of Flower startup: run with -m slow

TIERS = "minilm:r=4:n=1,static:r=1:hidden=64:n=1"


def test_two_tier_simulation(tmp_path, tiny_run_config):
    out = tmp_path / "sim"
    res = simulate(tiny_run_config({"tiers": TIERS}), out, num_clients=2, timeout=900)
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        # replies of both tiers accepted, each carrying exactly the federated tensors of the frozen model's space
        assert r["replied"] == 2 and r["rejected"] == 0 and r["failed"] == 0, r
        assert set(r["per_tier"]) == {"minilm:r=4", "static:r=1:hidden=64"}
        assert all(t["train_replied"] == 1 and t["clients"] == 1 for t in r["per_tier"].values())
        assert r["per_client"]["0"]["tier"] == "minilm:r=4" and r["per_client"]["1"]["tier"] == "static:r=1:hidden=64"
        assert r["per_tier"]["static:r=1:hidden=64"]["encoder"].startswith("static@")
        assert r["tier_switches"] == []
        assert r["bytes_up_train"] % 2 == 0  # two equal replies: the same tensors whatever the tier
    assert set(load_tensors(out / "global" / "latest.safetensors")) == {"prompt.zs", "head.weight", "head.bias"}
    names = sorted(p.name for p in (out / "private").iterdir())
    assert names == ["partition-0-of-2.safetensors", "partition-1-of-2.static.safetensors"]
    s = FedSettings.from_run_config(json.loads((out / "run.json").read_text())["settings"])
    shapes = []
    for pid, name in enumerate(names):
        saved = {k: tuple(v.shape) for k, v in load_tensors(out / "private" / name).items()}
        model = new_model(node_settings(s, node_tier(s, pid, 2, {})))
        assert saved == {n: tuple(model.named_trainable()[n].shape) for n in model.private_names()}
        shapes.append(saved)
    assert shapes[0]["prompt.u_head.3.weight"] == (10 * 4, 256) and shapes[1]["prompt.u_head.3.weight"] == (10 * 1, 64)
    assert shapes[0]["prompt.v_head.3.weight"] == (384 * 4, 256) and shapes[1]["prompt.v_head.3.weight"] == (384, 64)
    assert (out / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    # export picks client 1's tier and the static tier exports to ONNX through the normal exporter
    from export.pipeline import export_run

    meta = export_run(out, 1, tmp_path / "export-static", parity_examples=8, agreement_examples=16)
    assert meta["encoder"]["identity"].startswith("static@") and (meta["r"], meta["hidden"]) == (1, 64)
    assert meta["parity"]["fp32"]["passed"] and meta["source"]["private"].endswith(names[1])
