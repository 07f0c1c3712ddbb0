"""Client partitions: flwr-datasets partitioners on real SST-2, offline, deterministic by seed."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.partition import load_local_data, partition_sizes  # noqa: E402
from clients.settings import FedSettings, federated_names  # noqa: E402
from lopa_fed.config import ConfigError  # noqa: E402


@pytest.mark.parametrize("name", ["iid", "dirichlet", "inner-dirichlet", "pathological"])
def test_partitions_are_disjoint_complete_and_deterministic(name):
    s = FedSettings(partitioner=name, pool_size=600, alpha=0.3, seed=11)
    parts = [load_local_data(s, i, 3) for i in range(3)]
    idx = [set(p.indices) for p in parts]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    assert sum(len(i) for i in idx) == 600 == sum(partition_sizes(s, 3))
    again = load_local_data(FedSettings(partitioner=name, pool_size=600, alpha=0.3, seed=11), 1, 3)
    assert again == parts[1]
    for p in parts:
        assert p.train and p.test
        assert not {e.uid for e in p.train} & {e.uid for e in p.test}
    if name == "pathological":  # one class per client (first-deterministic assignment)
        for p in parts:
            assert len({e.label for e in p.train + p.test}) == 1


def test_inner_dirichlet_sizes_equal_and_dirichlet_failure_explained():
    s = FedSettings(partitioner="inner-dirichlet", alpha=0.1, pool_size=1000)
    assert partition_sizes(s, 10) == [100] * 10
    with pytest.raises(ValueError, match="inner-dirichlet"):
        partition_sizes(FedSettings(partitioner="dirichlet", alpha=0.1, pool_size=1000), 10)


def test_seed_changes_partitions():
    a = load_local_data(FedSettings(pool_size=300, seed=1), 0, 2).indices
    b = load_local_data(FedSettings(pool_size=300, seed=2), 0, 2).indices
    assert set(a) != set(b)


def test_out_of_range_partition():
    with pytest.raises(ValueError, match="out of range"):
        load_local_data(FedSettings(pool_size=100), 2, 2)


def test_run_config_parsing_and_errors():
    s = FedSettings.from_run_config({"local-steps": 3, "federate": "none", "resume": "true", "lr": 0, "unknown-key": 1})
    assert s.local_steps == 3 and s.federate == "none" and s.resume is True
    assert s.train_config().lr is None  # lr=0 → the paper's default
    assert FedSettings.from_run_config(s.to_run_config()) == s
    with pytest.raises(ConfigError, match="federate"):
        FedSettings.from_run_config({"federate": "heads"})
    with pytest.raises(ConfigError, match="local-steps"):
        FedSettings.from_run_config({"local-steps": "many"})
    with pytest.raises(ConfigError, match="dp-clip"):
        FedSettings(dp_noise=1.0)


def test_federate_modes():
    roles = {"prompt.zs": "shared", "prompt.u_head.1.weight": "private", "head.weight": "shared", "lora.x": "shared"}
    assert federated_names(roles, "zs") == ["prompt.zs", "head.weight", "lora.x"]
    assert federated_names(roles, "zs+heads") == list(roles)
    assert federated_names(roles, "all") == list(roles)
    assert federated_names(roles, "none") == []


def test_cli_options_become_run_config():
    from lopa_fed.cli import build_parser
    from server.cli import run_config_from_args

    args = build_parser().parse_args(
        ["simulate", "--num-clients", "3", "--rounds", "2", "--federate", "none", "--partition", "dirichlet",
         "--alpha", "0.5", "--out", "x", "--set", "trim-beta=0.1", "--set", 'strategy="fedmedian"']
    )
    cfg = run_config_from_args(args, 3)
    assert cfg == {"num-server-rounds": 2, "federate": "none", "partitioner": "dirichlet", "alpha": 0.5,
                   "trim-beta": 0.1, "strategy": "fedmedian", "min-nodes": 3}
    bad = build_parser().parse_args(["deploy-local", "--nodes", "2", "--min-nodes", "3", "--out", "x"])
    with pytest.raises(ValueError, match="min-nodes"):
        run_config_from_args(bad, 2)


@pytest.mark.parametrize("task", ["cruxeval-o", "mbpp"])
def test_code_task_partitions_split_both_halves(task):
    from lopa_fed.code_tasks import get_code_task

    s = FedSettings(task=task, pool_size=0, max_test_examples=0, seed=9876)
    parts = [load_local_data(s, i, 3) for i in range(3)]
    code = get_code_task(task)
    train_half, test_half = code.split(code.read(None), seed=9876)
    train_uids = [e.uid for p in parts for e in p.train]
    test_uids = [e.uid for p in parts for e in p.test]
    # every problem of each half goes to exactly one client; train and test never mix
    assert sorted(train_uids) == sorted(e.uid for e in train_half)
    assert sorted(test_uids) == sorted(e.uid for e in test_half)
    assert not set(train_uids) & set(test_uids)
    assert load_local_data(FedSettings(task=task, pool_size=0, max_test_examples=0), 2, 3) == parts[2]
    capped = load_local_data(FedSettings(task=task, pool_size=30, max_test_examples=4), 0, 3)
    assert len(capped.test) == 4 and 0 < len(capped.train) <= 30


def test_code_task_settings():
    s = FedSettings(task="cruxeval-i")
    assert s.is_code_task and s.model_name == "smollm2" and s.kind == "causal" and s.token_limit == 512
    assert FedSettings(task="mbpp", model="some/llm", max_length=300).model_name == "some/llm"
    assert FedSettings().model_name == "default" and FedSettings().token_limit == 128
    with pytest.raises(ConfigError, match="iid"):
        FedSettings(task="mbpp", partitioner="dirichlet")
    with pytest.raises(ConfigError, match="head"):
        FedSettings(task="mbpp", method="head")
    with pytest.raises(ConfigError, match="cruxeval-o"):
        FedSettings(task="humaneval")


def test_code_task_cli_uses_the_papers_rank():
    from lopa_fed.cli import build_parser
    from server.cli import run_config_from_args

    args = build_parser().parse_args(["simulate", "--task", "mbpp", "--max-new-tokens", "32", "--out", "x"])
    assert run_config_from_args(args, 2) == {"task": "mbpp", "max-new-tokens": 32, "min-nodes": 2, "r": 1}
    args = build_parser().parse_args(["simulate", "--task", "mbpp", "--set", "r=2", "--out", "x"])
    assert run_config_from_args(args, 2)["r"] == 2
