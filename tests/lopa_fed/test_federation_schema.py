"""The federation contract's run-config schema (``lopa_fed.federation``): parsing, refusal, completeness.

Pure Python: no Flower, no model. The pyproject test reads ``[tool.flwr.app.config]`` with
tomllib and compares it with the schema's defaults, so the table can never drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.config import LoPAConfig, TrainConfig  # noqa: E402
from lopa_fed.errors import ConfigError  # noqa: E402
from lopa_fed.federation import SCHEMA, FedSettings, federated_names  # noqa: E402
from lopa_fed.tasks import get_task  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_run_config_parsing_and_errors():
    s = FedSettings.from_run_config({"local-steps": 3, "federate": "none", "resume": "true", "lr": 0})
    assert s.train.max_steps == 3 and s.federate == "none" and s.server.resume is True
    assert s.train_config().lr == get_task("sst2").defaults.learning_rate("lopa")  # lr=0 → the task's lr
    assert FedSettings.from_run_config(s.to_run_config()) == s
    with pytest.raises(ConfigError, match="unknown run-config key 'unknown-key'"):
        FedSettings.from_run_config({"local-steps": 3, "unknown-key": 1})
    with pytest.raises(ConfigError, match="federate"):
        FedSettings.from_run_config({"federate": "heads"})
    with pytest.raises(ConfigError, match="local-steps"):
        FedSettings.from_run_config({"local-steps": "many"})
    with pytest.raises(ConfigError, match="dp-clip"):
        FedSettings.of(dp_noise=1.0)


def test_federate_modes():
    roles = {"prompt.zs": "shared", "prompt.u_head.1.weight": "private", "head.weight": "shared", "lora.x": "shared"}
    assert federated_names(roles, "zs") == ["prompt.zs", "head.weight", "lora.x"]
    assert federated_names(roles, "zs+heads") == list(roles)
    assert federated_names(roles, "all") == list(roles)
    assert federated_names(roles, "none") == []


def test_code_task_settings():
    s = FedSettings.of(task="cruxeval-i")
    assert s.task_spec.num_labels == 0 and s.model_name == "smollm2" and s.kind == "causal"
    assert s.train.max_length == 512 and s.lopa.r == 1 and s.metric == "pass@1"
    assert FedSettings.of(task="mbpp", model="some/llm", max_length=300).model_name == "some/llm"
    assert FedSettings.of(task="mbpp", r=2).lopa.r == 2  # an explicit rank wins over the task's
    # GLUE: the task's defaults, now the same as centralized training (max length 256, was 128)
    assert FedSettings.of().model_name == "default" and FedSettings.of().train.max_length == 256
    assert FedSettings.of().lopa.r == 4 and FedSettings.of().metric == "accuracy"
    with pytest.raises(ConfigError, match="iid"):
        FedSettings.of(task="mbpp", partitioner="dirichlet")
    with pytest.raises(ConfigError, match="head"):
        FedSettings.of(task="mbpp", method="head")
    with pytest.raises(ConfigError, match="cruxeval-o"):
        FedSettings.of(task="humaneval")


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("locl-steps", "local-steps"), ("lora_r", "lora-r"), ("drop-out", "dropout"), ("warmup", "warmup-ratio"),
     ("num-rounds", "num-server-rounds")],
)
def test_unknown_key_is_refused_with_the_closest_key(key, suggestion):
    with pytest.raises(ConfigError) as info:
        FedSettings.from_run_config({key: 3})
    assert str(info.value) == f"unknown run-config key {key!r}; did you mean {suggestion!r}?"
    assert "\n" not in str(info.value)


def test_unknown_key_without_a_close_match():
    with pytest.raises(ConfigError, match=r"^unknown run-config key 'zzzzzz'; see \[tool.flwr.app.config\]"):
        SCHEMA.check_known(["zzzzzz"])


def test_every_config_field_has_a_run_config_key():
    fields = {(k.section, k.field): k.name for k in SCHEMA}
    for section, cls in (("lopa", LoPAConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            if (section, f.name) == ("train", "seed"):
                assert "seed" in SCHEMA  # one seed key seeds partitions and local training
                continue
            assert (section, f.name) in fields, f"{cls.__name__}.{f.name} has no run-config key"
    for name in ("lora-r", "dropout", "zs-init-std", "warmup-ratio", "grad-clip", "lora-targets", "weight-decay"):
        assert name in SCHEMA
    assert fields[("train", "epochs")] == "local-epochs" and fields[("train", "max_steps")] == "local-steps"


def test_new_keys_reach_the_configs():
    s = FedSettings.of(
        lora_r=8, dropout=0.2, zs_init_std=0.5, warmup_ratio=0.1, grad_clip=0.5, weight_decay=0.01,
        lora_targets="query,value", eval_batch_size=32, local_steps=0, local_epochs=2,
    )
    assert (s.lopa.lora_r, s.lopa.dropout, s.lopa.zs_init_std, s.lopa.lora_targets) == (8, 0.2, 0.5, ("query", "value"))
    t = s.train_config(seed=5)
    assert (t.warmup_ratio, t.grad_clip, t.weight_decay, t.eval_batch_size, t.max_steps, t.epochs, t.seed) == (
        0.1, 0.5, 0.01, 32, None, 2, 5
    )
    assert FedSettings.from_run_config(s.to_run_config()) == s
    with pytest.raises(ConfigError, match="^dropout must be in"):
        FedSettings.of(dropout=1.5)
    with pytest.raises(ConfigError, match="^zs-init-std must be > 0"):
        FedSettings.of(zs_init_std=0.0)
    with pytest.raises(ConfigError, match="^local-epochs must be >= 1"):
        FedSettings.of(local_epochs=0)
    with pytest.raises(ConfigError, match=r"^local-steps must be >= 0 \(0: no cap\)"):
        FedSettings.of(local_steps=-1)
    with pytest.raises(ConfigError, match="^warmup-ratio must be in"):
        FedSettings.of(warmup_ratio=1.0)


def test_pyproject_table_equals_schema_defaults():
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    defaults = SCHEMA.defaults()
    assert set(table) == set(defaults), (sorted(set(defaults) - set(table)), sorted(set(table) - set(defaults)))
    for key, value in defaults.items():
        assert table[key] == value and type(table[key]) is type(value), key
    # The apps see this table (plus overrides): it parses to the default settings.
    assert FedSettings.from_run_config(table) == FedSettings.from_run_config({}) == FedSettings.of()
