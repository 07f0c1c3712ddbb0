"""Simulated attacks (research knob, clients/attack.py) on tiny tensors, and their run-config keys."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.attack import (  # noqa: E402
    attack_reply,
    flip_labels,
    gaussian_noise,
    nan_update,
    poisoned_train,
    sign_flip,
    update_norm,
    update_of,
)
from lopa_fed.errors import ConfigError  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from lopa_fed.tasks.files import Example  # noqa: E402

G = {"zs": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), "b": np.array([0.5], dtype=np.float32)}
T = {"zs": torch.tensor([[1.5, 2.0], [3.0, 3.0]]), "b": torch.tensor([0.5])}  # update: [[.5, 0], [0, -1]], [0]


def test_update_and_norm():
    d = update_of(G, T)
    np.testing.assert_allclose(d["zs"], [[0.5, 0.0], [0.0, -1.0]])
    assert update_norm(d) == pytest.approx(math.sqrt(1.25))


def test_sign_flip_scales_the_negated_update():
    out = sign_flip(G, T, 10.0)
    np.testing.assert_allclose(out["zs"], [[1.0 - 5.0, 2.0], [3.0, 4.0 + 10.0]])
    np.testing.assert_allclose(out["b"], [0.5])
    assert out["zs"].dtype == np.float32 and out["zs"].shape == (2, 2)


def test_gaussian_noise_has_the_scaled_update_norm_and_is_seeded():
    a = gaussian_noise(G, T, 1.0, np.random.default_rng(0))
    assert update_norm(update_of(G, a)) == pytest.approx(math.sqrt(1.25), rel=1e-5)
    b = gaussian_noise(G, T, 3.0, np.random.default_rng(0))
    assert update_norm(update_of(G, b)) == pytest.approx(3 * math.sqrt(1.25), rel=1e-5)
    again = gaussian_noise(G, T, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(a["zs"], again["zs"])
    assert not np.allclose(a["zs"] - G["zs"], update_of(G, T)["zs"])  # the honest direction is gone
    still = gaussian_noise(G, {k: torch.as_tensor(v) for k, v in G.items()}, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(still["zs"], G["zs"])  # no update, no noise


def test_nan_update_keeps_shapes_and_dtypes():
    out = nan_update(T)
    assert {k: v.shape for k, v in out.items()} == {"zs": (2, 2), "b": (1,)}
    assert all(v.dtype == np.float32 and np.isnan(v).all() for v in out.values())


def test_flip_labels_binary_and_multiclass():
    ex = [Example("a", None, 0, "u0"), Example("b", None, 1, "u1")]
    assert [e.label for e in flip_labels(ex, 2)] == [1, 0]
    assert [e.text_a for e in flip_labels(ex, 2)] == ["a", "b"]
    assert [e.label for e in flip_labels([Example("c", None, 2, "")], 3)] == [0]
    assert [e.label for e in ex] == [0, 1]  # originals untouched


def test_only_listed_partitions_attack():
    s = FedSettings.of(attack="signflip", attackers="1,3", attack_scale=2)
    assert s.attack.partitions == {1, 3} and s.attack.attacks(3) and not s.attack.attacks(0)
    honest = attack_reply(s, 0, G, T, server_round=1)
    assert honest is T
    bad = attack_reply(s, 1, G, T, server_round=1)
    assert isinstance(bad["zs"], torch.Tensor) and bad["zs"].dtype == torch.float32
    np.testing.assert_allclose(bad["zs"].numpy(), [[0.0, 2.0], [3.0, 6.0]])
    assert attack_reply(FedSettings.of(attackers="1"), 1, G, T, 1) is T  # attack = none: nobody attacks
    n = attack_reply(FedSettings.of(attack="nan", attackers="0"), 0, G, T, 1)
    assert torch.isnan(n["zs"]).all()
    a1 = attack_reply(FedSettings.of(attack="noise", attackers="0"), 0, G, T, 1)
    a2 = attack_reply(FedSettings.of(attack="noise", attackers="0"), 0, G, T, 2)
    assert not torch.equal(a1["zs"], a2["zs"])  # fresh noise each round


def test_labelflip_poisons_the_attackers_train_split_only():
    ex = (Example("a", None, 0, "u0"), Example("b", None, 1, "u1"))
    s = FedSettings.of(attack="labelflip", attackers="0")
    assert [e.label for e in poisoned_train(s, 0, ex)] == [1, 0]
    assert poisoned_train(s, 1, ex) == ex
    assert attack_reply(s, 0, G, T, 1) is T  # data poisoning: the reply itself is honest


def test_attack_keys_are_checked():
    for bad, key in ((dict(attack="bogus"), "attack"), (dict(attackers="x"), "attackers"),
                     (dict(attack_scale=0), "attack-scale")):
        with pytest.raises(ConfigError, match=key):
            FedSettings.of(**bad)
    s = FedSettings.of(attack="noise", attackers="0,2", attack_scale=1)
    assert FedSettings.from_run_config(s.to_run_config()) == s
    assert s.to_run_config()["attackers"] == "0,2"
