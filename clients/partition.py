"""Client data: flwr-datasets partitions of the real GLUE train split, offline.

The task's train split (read by :mod:`lopa_fed.tasks` from local TSV files) is
optionally cut to a seeded pool, shuffled with the seed, wrapped in a local
:class:`datasets.Dataset` and handed to a flwr-datasets partitioner through
``partitioner.dataset = ds`` (no hub access). Each partition is then split into a
local train and a local test set. Everything is a pure function of the settings,
so every process computes the same partitions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lopa_fed.tasks import Example, get_task

from .settings import FedSettings


@dataclass(frozen=True)
class LocalData:
    """One client's examples: ``train`` and ``test`` (disjoint), and the pool indices they came from."""

    train: tuple[Example, ...]
    test: tuple[Example, ...]
    indices: tuple[int, ...]


def make_partitioner(name: str, num_partitions: int, *, alpha: float, classes_per_partition: int, seed: int):
    """Build a flwr-datasets partitioner by name (``iid``, ``dirichlet`` over labels, ``pathological``)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=True,
            seed=seed,
        )
    if name == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=classes_per_partition,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    raise ValueError(f"unknown partitioner {name!r}; choose iid, dirichlet or pathological")


@functools.lru_cache(maxsize=8)
def _partition_indices(
    task: str,
    data_dir: str,
    pool_size: int,
    seed: int,
    partitioner: str,
    num_partitions: int,
    alpha: float,
    classes_per_partition: int,
) -> tuple[tuple[int, ...], ...]:
    """Pool indices of every partition (cached per process; all partitions computed at once)."""
    from datasets import Dataset

    examples = get_task(task).read("train", data_dir or None)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if pool_size and pool_size < len(order):
        order = order[:pool_size]
    ds = Dataset.from_dict({"idx": order.tolist(), "label": [examples[i].label for i in order]})
    part = make_partitioner(
        partitioner, num_partitions, alpha=alpha, classes_per_partition=classes_per_partition, seed=seed
    )
    part.dataset = ds
    return tuple(tuple(int(i) for i in part.load_partition(p)["idx"]) for p in range(num_partitions))


def partition_sizes(settings: FedSettings, num_partitions: int, data_dir: str = "") -> list[int]:
    """Number of pool examples in each partition."""
    parts = _partition_indices(
        settings.task,
        data_dir,
        settings.pool_size,
        settings.seed,
        settings.partitioner,
        num_partitions,
        float(settings.alpha),
        settings.classes_per_partition,
    )
    return [len(p) for p in parts]


def load_local_data(settings: FedSettings, partition_id: int, num_partitions: int, data_dir: str = "") -> LocalData:
    """Partition ``partition_id`` of ``num_partitions``, split into local train and test.

    Raises
    ------
    ValueError
        ``partition_id`` is out of range, or the partition has fewer than 2 examples.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is out of range for num-partitions {num_partitions}")
    parts = _partition_indices(
        settings.task,
        data_dir,
        settings.pool_size,
        settings.seed,
        settings.partitioner,
        num_partitions,
        float(settings.alpha),
        settings.classes_per_partition,
    )
    idx = parts[partition_id]
    if len(idx) < 2:
        raise ValueError(f"partition {partition_id} has {len(idx)} example(s); use a larger pool-size or fewer clients")
    examples = get_task(settings.task).read("train", data_dir or None)
    rng = np.random.default_rng([settings.seed, partition_id])
    perm = rng.permutation(len(idx))
    n_test = min(max(1, int(round(len(idx) * settings.test_fraction))), len(idx) - 1)
    test_pos = sorted(perm[:n_test].tolist())
    if settings.max_test_examples:
        test_pos = test_pos[: settings.max_test_examples]
    test_set = set(perm[:n_test].tolist())
    train = tuple(examples[idx[i]] for i in range(len(idx)) if i not in test_set)
    test = tuple(examples[idx[i]] for i in test_pos)
    return LocalData(train=train, test=test, indices=tuple(idx))
