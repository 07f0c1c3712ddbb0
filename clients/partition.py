"""Client data: flwr-datasets partitions of a task's real data, offline.

The task's train split (``task.read("train", data_dir, seed=...)``) is optionally cut to
a seeded pool, shuffled with the seed, wrapped in a local :class:`datasets.Dataset` and
handed to a flwr-datasets partitioner through ``partitioner.dataset = ds`` (no hub
access). Where a client's test examples come from depends on whether the task has
class labels:

* **labelled tasks** (GLUE) can be label-skewed, so each partition is split into a
  local train and a local test set (``test-fraction``): personalised accuracy is measured
  on the client's own label mix;
* **tasks without labels** (``task.num_labels == 0``: CruxEval-O/I, MBPP) take only the
  iid partitioner; ``read("train")`` and ``read("dev")`` are the paper's seeded 50/50
  halves, and each is partitioned iid, so client ``i`` trains on its share of the train
  half and scores on its share of the test half; the union over clients is the whole
  test half.

Everything is a pure function of the settings, so every process computes the same
partitions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from lopa_fed.errors import ConfigError
from lopa_fed.federation import FedSettings
from lopa_fed.tasks import get_task


@dataclass(frozen=True)
class LocalData:
    """One client's examples: ``train`` and ``test`` (disjoint), and the pool indices they came from."""

    train: tuple[Any, ...]
    test: tuple[Any, ...]
    indices: tuple[int, ...]


def make_partitioner(
    name: str, num_partitions: int, *, alpha: float, classes_per_partition: int, seed: int, num_examples: int = 0
):
    """Build a flwr-datasets partitioner by name.

    ``iid``; ``dirichlet`` (each label's examples are spread over the partitions by
    Dir(α), so partition sizes vary); ``inner-dirichlet`` (equal partition sizes, each
    partition's label mix ~ Dir(α); needs ``num_examples``); ``pathological``
    (``classes_per_partition`` labels per partition).
    """
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        InnerDirichletPartitioner,
        PathologicalPartitioner,
    )

    if name == "inner-dirichlet":
        base, extra = divmod(num_examples, num_partitions)
        sizes = [base + (1 if i < extra else 0) for i in range(num_partitions)]
        return InnerDirichletPartitioner(partition_sizes=sizes, partition_by="label", alpha=alpha, seed=seed)
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
    raise ConfigError(f"unknown partitioner {name!r}; choose iid, dirichlet, inner-dirichlet or pathological")


@functools.lru_cache(maxsize=8)
def _examples(task: str, data_dir: str, seed: int, split: str) -> tuple:
    """``task.read(split)``: the GLUE train split, or a half of a code task's seeded 50/50 split."""
    return tuple(get_task(task).read(split, data_dir or None, seed=seed))


def _split_indices(n: int, num_partitions: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """iid flwr-datasets partitions of ``range(n)`` after a seeded shuffle (the dev split of a task without labels)."""
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(n)
    part = make_partitioner("iid", num_partitions, alpha=1.0, classes_per_partition=1, seed=seed)
    part.dataset = Dataset.from_dict({"idx": order.tolist()})
    return tuple(tuple(int(i) for i in part.load_partition(p)["idx"]) for p in range(num_partitions))


def _label(task: Any, example: Any) -> int:
    label = task.label_of(example)
    return 0 if label is None else int(label)


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

    examples = _examples(task, data_dir, seed, "train")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if pool_size and pool_size < len(order):
        order = order[:pool_size]
    spec = get_task(task)
    ds = Dataset.from_dict({"idx": order.tolist(), "label": [_label(spec, examples[i]) for i in order]})
    part = make_partitioner(
        partitioner,
        num_partitions,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        seed=seed,
        num_examples=len(order),
    )
    part.dataset = ds
    try:
        return tuple(tuple(int(i) for i in part.load_partition(p)["idx"]) for p in range(num_partitions))
    except ValueError as exc:
        if partitioner != "dirichlet":
            raise
        raise ConfigError(
            f"the dirichlet partitioner could not give each of {num_partitions} clients 2 or more of "
            f"{len(order)} examples at alpha={alpha} ({exc}); use partitioner inner-dirichlet (equal client "
            "sizes, label mix ~ Dir(alpha)), a larger alpha or pool-size, or fewer clients"
        ) from exc


def _indices_of(settings: FedSettings, num_partitions: int, data_dir: str) -> tuple[tuple[int, ...], ...]:
    d = settings.data
    return _partition_indices(
        settings.task, data_dir, d.pool_size, settings.seed, d.partitioner, num_partitions, float(d.alpha),
        d.classes_per_partition,
    )


def partition_sizes(settings: FedSettings, num_partitions: int, data_dir: str = "") -> list[int]:
    """Number of pool examples in each partition."""
    return [len(p) for p in _indices_of(settings, num_partitions, data_dir)]


def load_local_data(settings: FedSettings, partition_id: int, num_partitions: int, data_dir: str = "") -> LocalData:
    """Partition ``partition_id`` of ``num_partitions``, with its local train and test examples.

    Raises
    ------
    ConfigError
        ``partition_id`` is out of range, or the partition is too small to train and test on.
    """
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is out of range for num-partitions {num_partitions}")
    idx = _indices_of(settings, num_partitions, data_dir)[partition_id]
    if settings.task_spec.num_labels == 0:
        return _share_of_both_halves(settings, idx, partition_id, num_partitions, data_dir)
    return _held_out_locally(settings, idx, partition_id, data_dir)


def _share_of_both_halves(
    settings: FedSettings, idx: tuple[int, ...], partition_id: int, num_partitions: int, data_dir: str
) -> LocalData:
    """Tasks without labels: this client's iid shares of the train half and of the test half."""
    if not idx:
        raise ConfigError(f"partition {partition_id} has no training problem; use a larger pool-size or fewer clients")
    train_half = _examples(settings.task, data_dir, settings.seed, "train")
    test_half = _examples(settings.task, data_dir, settings.seed, "dev")
    test_idx = _split_indices(len(test_half), num_partitions, settings.seed)[partition_id]
    if settings.data.max_test_examples:
        test_idx = test_idx[: settings.data.max_test_examples]
    if not test_idx:
        raise ConfigError(f"partition {partition_id} has no test problem; use fewer clients")
    return LocalData(
        train=tuple(train_half[i] for i in sorted(idx)),
        test=tuple(test_half[i] for i in sorted(test_idx)),
        indices=tuple(idx),
    )


def _held_out_locally(settings: FedSettings, idx: tuple[int, ...], partition_id: int, data_dir: str) -> LocalData:
    """Labelled tasks: a seeded ``test-fraction`` of this client's partition is its local test set."""
    if len(idx) < 2:
        raise ConfigError(f"partition {partition_id} has {len(idx)} example(s); use a larger pool-size or fewer clients")
    examples = _examples(settings.task, data_dir, settings.seed, "train")
    rng = np.random.default_rng([settings.seed, partition_id])
    perm = rng.permutation(len(idx))
    n_test = min(max(1, int(round(len(idx) * settings.data.test_fraction))), len(idx) - 1)
    test_pos = sorted(perm[:n_test].tolist())
    if settings.data.max_test_examples:
        test_pos = test_pos[: settings.data.max_test_examples]
    test_set = set(perm[:n_test].tolist())
    train = tuple(examples[idx[i]] for i in range(len(idx)) if i not in test_set)
    test = tuple(examples[idx[i]] for i in test_pos)
    return LocalData(train=train, test=test, indices=tuple(idx))
