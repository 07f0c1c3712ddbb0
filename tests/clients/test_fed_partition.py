"""Client partitions: flwr-datasets partitioners on real SST-2, offline, deterministic by seed."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.partition import load_local_data, partition_sizes  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from lopa_fed.tasks import get_task  # noqa: E402


@pytest.mark.parametrize("name", ["iid", "dirichlet", "inner-dirichlet", "pathological"])
def test_partitions_are_disjoint_complete_and_deterministic(name):
    s = FedSettings.of(partitioner=name, pool_size=600, alpha=0.3, seed=11)
    parts = [load_local_data(s, i, 3) for i in range(3)]
    idx = [set(p.indices) for p in parts]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    assert sum(len(i) for i in idx) == 600 == sum(partition_sizes(s, 3))
    again = load_local_data(FedSettings.of(partitioner=name, pool_size=600, alpha=0.3, seed=11), 1, 3)
    assert again == parts[1]
    for p in parts:
        assert p.train and p.test
        assert not {e.uid for e in p.train} & {e.uid for e in p.test}
    if name == "pathological":  # one class per client (first-deterministic assignment)
        for p in parts:
            assert len({e.label for e in p.train + p.test}) == 1


def test_inner_dirichlet_sizes_equal_and_dirichlet_failure_explained():
    s = FedSettings.of(partitioner="inner-dirichlet", alpha=0.1, pool_size=1000)
    assert partition_sizes(s, 10) == [100] * 10
    with pytest.raises(ValueError, match="inner-dirichlet"):
        partition_sizes(FedSettings.of(partitioner="dirichlet", alpha=0.1, pool_size=1000), 10)


def test_seed_changes_partitions():
    a = load_local_data(FedSettings.of(pool_size=300, seed=1), 0, 2).indices
    b = load_local_data(FedSettings.of(pool_size=300, seed=2), 0, 2).indices
    assert set(a) != set(b)


def test_out_of_range_partition():
    with pytest.raises(ValueError, match="out of range"):
        load_local_data(FedSettings.of(pool_size=100), 2, 2)


@pytest.mark.parametrize("task", ["cruxeval-o", "mbpp"])
def test_code_task_partitions_split_both_halves(task):
    s = FedSettings.of(task=task, pool_size=0, max_test_examples=0, seed=9876)
    parts = [load_local_data(s, i, 3) for i in range(3)]
    code = get_task(task)
    train_half, test_half = code.split(code.read_all(None), seed=9876)
    train_uids = [e.uid for p in parts for e in p.train]
    test_uids = [e.uid for p in parts for e in p.test]
    # every problem of each half goes to exactly one client; train and test never mix
    assert sorted(train_uids) == sorted(e.uid for e in train_half)
    assert sorted(test_uids) == sorted(e.uid for e in test_half)
    assert not set(train_uids) & set(test_uids)
    assert load_local_data(FedSettings.of(task=task, pool_size=0, max_test_examples=0), 2, 3) == parts[2]
    capped = load_local_data(FedSettings.of(task=task, pool_size=30, max_test_examples=4), 0, 3)
    assert len(capped.test) == 4 and 0 < len(capped.train) <= 30
