"""Encoder tiers and per-node settings (issue 15), on tiny configs: no training, no Flower.

The static tier is built on a tiny random frozen model; the truncated MiniLM tier on the
packaged MiniLM (its layers are shared with the full model, not copied).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lopa_fed.config import LoPAConfig
from lopa_fed.errors import ConfigError
from lopa_fed.federation import FedSettings
from lopa_fed.federation.hetero import fleet_size, node_settings, node_tier, parse_tiers
from lopa_fed.model import PromptedModel
from lopa_fed.tiers import encoder_identity, is_tier, load_encoder, state_key, tier_info, tier_name


def test_tier_names_and_identities():
    assert [tier_info(n).layers for n in ("minilm", "minilm-l3", "minilm-l1", "static")] == [6, 3, 1, 0]
    assert not is_tier("default") and not is_tier("smollm2") and tier_info("/some/path") is None
    with pytest.raises(ConfigError, match="minilm-l1 to minilm-l5"):
        tier_info("minilm-l6")
    ids = {n: encoder_identity(n, "frozen/x") for n in ("minilm", "minilm-l3", "static")}
    assert ids == {
        "minilm": "sentence-transformers/all-MiniLM-L6-v2",
        "minilm-l3": "sentence-transformers/all-MiniLM-L6-v2@layers=3",
        "static": "static@frozen/x",
    }
    assert encoder_identity("default", "frozen/x") == ids["minilm"]
    assert {n: tier_name(i) for n, i in ids.items()} == {"minilm": "minilm", "minilm-l3": "minilm-l3", "static": "static"}
    # the full MiniLM keeps the plain private-state file name; other tiers get their own key
    assert [state_key(i) for i in ids.values()] == ["", "minilm-l3", "static"]
    assert state_key("/tmp/some-encoder") == ""


def test_static_tier_is_the_frozen_models_embeddings(tiny_frozen):
    enc = load_encoder("static", tiny_frozen)
    assert enc.identity == "static@tiny-bert" and enc.hidden_size == tiny_frozen.d == 32
    assert load_encoder("static", tiny_frozen) is enc  # once per process per frozen model
    assert load_encoder(enc.identity, tiny_frozen) is enc  # a checkpoint's recorded identity
    texts = ["a fine film", ("a premise", "a hypothesis")]
    e = enc.encode(texts)  # B×d
    ids = enc.tokenize(texts)
    table = tiny_frozen.embeddings.weight
    w = ids["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((table[ids["input_ids"]] * w).sum(1) / w.sum(1), dim=-1)
    torch.testing.assert_close(e, want)
    assert not any(p.requires_grad for p in enc.net.parameters())
    with pytest.raises(ConfigError, match="another frozen model"):
        load_encoder("static@other-model", tiny_frozen)


def test_models_of_two_tiers_share_only_frozen_space_shapes(tiny_frozen, tiny_encoder):
    """Different encoders (h = 24 vs h = d = 32), ranks and head widths: the shared tensors have one shape."""
    static = load_encoder("static", tiny_frozen)
    a = PromptedModel(tiny_frozen, LoPAConfig(m=3, r=4, hidden=16), encoder=tiny_encoder)
    b = PromptedModel(tiny_frozen, LoPAConfig(m=3, r=1, hidden=8), encoder=static)
    shared = a.shared_names()
    assert shared == b.shared_names() == ["prompt.zs", "head.weight", "head.bias"]
    sa, sb = a.state(shared), b.state(shared)
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    assert sa["prompt.zs"].shape == (3, 32)
    pa, pb = a.state(a.private_names()), b.state(b.private_names())
    assert set(pa) == set(pb) and any(pa[k].shape != pb[k].shape for k in pa)
    with pytest.raises(ValueError, match="shape"):
        b.load_state(pa)  # heads of another tier never load


def test_truncated_minilm_shares_the_full_models_layers():
    full, l3 = load_encoder("minilm"), load_encoder("minilm-l3")
    assert len(l3.net.model.encoder.layer) == 3 and len(full.net.model.encoder.layer) == 6
    assert all(x is y for x, y in zip(l3.net.model.encoder.layer, full.net.model.encoder.layer[:3]))
    assert l3.net.model.embeddings is full.net.model.embeddings
    assert full.identity == "sentence-transformers/all-MiniLM-L6-v2"
    assert l3.identity.endswith("@layers=3") and l3.hidden_size == 384
    e = l3.encode(["a fine film"])
    assert e.shape == (1, 384) and torch.allclose(e.norm(dim=-1), torch.ones(1))


def test_parse_tiers_and_fleet_size():
    specs = parse_tiers("minilm:r=4:n=4, minilm-l3:r=1:n=3,static:r=1:hidden=64:n=3")
    assert [(s.encoder, s.r, s.hidden, s.count) for s in specs] == [
        ("minilm", 4, None, 4), ("minilm-l3", 1, None, 3), ("static", 1, 64, 3)
    ]
    assert parse_tiers("") == () and parse_tiers("static")[0].count == 1
    for bad, msg in [("roberta:n=2", "unknown encoder tier"), ("static:k=2", "not r=R"), ("static:r=0", ">= 1"),
                     ("static:n=x", "integer")]:
        with pytest.raises(ConfigError, match=msg):
            parse_tiers(bad)
    assert fleet_size("minilm:n=4,static:n=3", None) == 7 and fleet_size("", None) == 2 and fleet_size(None, 5) == 5
    with pytest.raises(ConfigError, match="assigns 7 clients but 3"):
        fleet_size("minilm:n=4,static:n=3", 3)


def test_node_tier_precedence_and_settings():
    s = FedSettings.of(tiers="minilm:r=4:n=2,static:r=1:hidden=64:n=1", hidden=128)
    assert s.lopa.r == 4  # the run's own (the task's) rank
    t0, t2 = node_tier(s, 0, 3, {}), node_tier(s, 2, 3, {})
    assert (t0.encoder, t0.r, t0.hidden, t0.source) == ("minilm", 4, 128, "tiers")
    assert (t2.encoder, t2.r, t2.hidden) == ("static", 1, 64)
    assert t0.label(128) == "minilm:r=4" and t2.label(128) == "static:r=1:hidden=64"
    own = node_tier(s, 2, 3, {"partition-id": 2, "encoder": "minilm-l3", "r": 2})
    assert (own.encoder, own.r, own.hidden, own.source) == ("minilm-l3", 2, 64, "node-config")
    ns = node_settings(s, own)
    assert (ns.encoder, ns.lopa.r, ns.lopa.hidden) == ("minilm-l3", 2, 64) and ns.fingerprint() != s.fingerprint()
    assert node_settings(s, node_tier(FedSettings.of(), 0, 2, {})) is not None
    plain = FedSettings.of()
    assert node_settings(plain, node_tier(plain, 0, 2, {})) is plain  # nothing differs: same settings
    with pytest.raises(ConfigError, match="assigns 3 partitions but the run has 4"):
        node_tier(s, 0, 4, {})
    with pytest.raises(ConfigError, match="positive integer"):
        node_tier(s, 0, 3, {"r": 0})


def test_tiers_need_federate_zs_and_a_lopa_method():
    with pytest.raises(ConfigError, match="federate = zs or none"):
        FedSettings.of(tiers="minilm:n=1,static:n=1", federate="zs+heads")
    with pytest.raises(ConfigError, match="LoPA method"):
        FedSettings.of(tiers="minilm:n=1,static:n=1", method="idpg")
    with pytest.raises(ConfigError, match="tiers: unknown encoder tier"):
        FedSettings.of(tiers="bert:n=2")
    s = FedSettings.of(federate="all")
    with pytest.raises(ConfigError, match="node config: nodes with different encoders"):
        node_tier(s, 0, 2, {"encoder": "static"})
    assert FedSettings.of(tiers="static:n=2", federate="none").tiers == "static:n=2"
    assert dataclasses.replace(FedSettings.of(), tiers="").to_run_config()["tiers"] == ""
