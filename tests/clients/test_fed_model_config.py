"""Run-config keys reach the model a client (and the server) builds: ``lora-r``, ``dropout``, ``r``, ``zs-init-std``.

Builds real models on the packaged MiniLM (loaded once per process) through
:func:`lopa_fed.federation.new_model`, the one builder both apps use.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.federation import FedSettings, new_model  # noqa: E402


def test_lopa_rank_dropout_and_zs_scale_reach_the_model():
    s = FedSettings.from_run_config({"r": 2, "dropout": 0.3, "zs-init-std": 0.01, "hidden": 32})
    model = new_model(s)
    assert (model.config.r, model.config.dropout, model.config.hidden) == (2, 0.3, 32) == (s.lopa.r, s.lopa.dropout, 32)
    drops = [mod.p for mod in model.modules() if isinstance(mod, torch.nn.Dropout) and mod.p == 0.3]
    assert len(drops) == 2  # in front of the u and v heads
    shapes = {n: tuple(p.shape) for n, p in model.named_trainable().items()}
    m = s.lopa.m
    assert any(shape == (m * 2, 32) for name, shape in shapes.items() if name.startswith("prompt.u_head"))
    assert float(model.named_trainable()["prompt.zs"].detach().std()) < 0.05


def test_lora_rank_reaches_the_adapters():
    s = FedSettings.of(method="lora", lora_r=3, lora_alpha=6)
    model = new_model(s)
    ranks = {min(p.shape) for n, p in model.named_trainable().items() if "lora_A" in n or "lora_B" in n}
    assert ranks == {3}
    assert model.config.lora_r == 3 and model.config.lora_alpha == 6
