"""Checkpoints: a round trip for every method, written whole or not at all, and refused when unsafe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lopa_fed import atomic
from lopa_fed.checkpoint import CheckpointError, load_checkpoint, load_tensors, read_config, save_checkpoint
from lopa_fed.config import METHODS, ConfigError, LoPAConfig, TrainConfig
from lopa_fed.model import PromptedModel


def _model(frozen, encoder, method: str, seed: int = 0) -> PromptedModel:
    torch.manual_seed(seed)
    cfg = LoPAConfig(method=method, m=3, r=2, hidden=8, lora_r=2)
    enc = encoder if cfg.has_generator and method != "pt" else None
    return PromptedModel(frozen, cfg, num_labels=2, encoder=enc)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_is_bit_exact_for_every_method(tmp_path, tiny_frozen, tiny_encoder, method):
    model = _model(tiny_frozen, tiny_encoder, method, seed=1)
    save_checkpoint(tmp_path / "ck", model, task="sst2")
    other = _model(tiny_frozen, tiny_encoder, method, seed=2)
    load_checkpoint(tmp_path / "ck", other)
    a, b = model.state(), other.state()
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    expected = {"config.json", "shared.safetensors"} | ({"private.safetensors"} if model.private_names() else set())
    assert {p.name for p in (tmp_path / "ck").iterdir()} == expected


def test_a_failed_save_leaves_the_old_checkpoint_whole(tmp_path, tiny_frozen, tiny_encoder, monkeypatch):
    old = _model(tiny_frozen, tiny_encoder, "lopa", seed=1)
    save_checkpoint(tmp_path / "ck", old)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    new = _model(tiny_frozen, tiny_encoder, "lopa", seed=2)
    calls = []

    def interrupted(path, tensors, metadata=None):  # the shared file is written, then the process dies
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        atomic.write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    import lopa_fed.checkpoint as ck

    monkeypatch.setattr(ck, "save_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", new)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging directory left behind


def test_non_finite_tensors_are_refused_by_name(tmp_path, tiny_frozen, tiny_encoder):
    model = _model(tiny_frozen, tiny_encoder, "lopa")
    save_checkpoint(tmp_path / "ck", model)
    shared = load_tensors(tmp_path / "ck" / "shared.safetensors")
    shared["prompt.zs"][0, 0] = float("nan")
    save_file(shared, str(tmp_path / "ck" / "shared.safetensors"))
    with pytest.raises(CheckpointError, match=r"shared\.safetensors: tensor\(s\) prompt\.zs hold NaN or Inf"):
        load_checkpoint(tmp_path / "ck", model)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c["lopa"].update(m="ten"), "LoPAConfig.m must be an integer, got 'ten'"),
        (lambda c: c["lopa"].update(m=10.7), "LoPAConfig.m must be an integer, got 10.7"),
        (lambda c: c.update(frozen_kind="bogus"), "'frozen_kind' must be one of auto, classifier, mlm, causal"),
        (lambda c: c.pop("frozen_model"), "'frozen_model' is missing"),
        (lambda c: c.update(train={"lr": "fast"}), "TrainConfig.lr must be a finite number"),
    ],
)
def test_bad_config_values_are_one_clear_error(tmp_path, tiny_frozen, tiny_encoder, edit, needle):
    save_checkpoint(tmp_path / "ck", _model(tiny_frozen, tiny_encoder, "lopa"), train=TrainConfig().to_dict())
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    edit(cfg)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_config(tmp_path / "ck")


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"m": "ten"}, "m must be an integer"),
        ({"r": True}, "r must be an integer"),
        ({"zs_init_std": float("inf")}, "zs_init_std must be a finite number"),
        ({"lora_targets": ("q", 3)}, "lora_targets must be a list of strings"),
    ],
)
def test_configs_check_their_types(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        LoPAConfig(**kw)
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        TrainConfig(lr=float("inf"))
