"""What one client does for a train or evaluate message, without Flower types.

:func:`local_train` and :func:`local_evaluate` take the received shared tensors and
return what goes back. The ClientApp (:mod:`clients.app`) only converts records. The
frozen model, the encoder and the encoded partition come from per-process caches, so a
worker process loads the model once, whatever the number of rounds and clients it
serves. Private tensors are never kept in module globals: they go through
:class:`clients.state.PrivateStore` on disk.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lopa_fed import weights
from lopa_fed.backbone import FrozenModel
from lopa_fed.data import EncodedDataset
from lopa_fed.federation import FedSettings, ProtocolError, federated_names, new_model
from lopa_fed.model import PromptedModel
from lopa_fed.train import evaluate, fit

from .attack import poisoned_train
from .hetero import encoder_of, private_meta
from .partition import LocalData, load_local_data
from .state import PrivateStore

log = logging.getLogger("flwr.lopa_fed.clients")


@dataclass(frozen=True)
class ClientEnv:
    """Where a client's data and private state live, and which partition it is."""

    partition_id: int
    num_partitions: int
    data_dir: str
    private_dir: str
    state_tag: str


def model_loads() -> int:
    """Most times any one model was loaded in this process (``lopa_fed.weights.LOAD_COUNTS``); 1 is the budget."""
    return int(max(weights.LOAD_COUNTS.values(), default=0))


@functools.lru_cache(maxsize=32)
def local_data(settings: FedSettings, partition_id: int, num_partitions: int, data_dir: str) -> LocalData:
    """The raw local examples of a partition (cached per process)."""
    return load_local_data(settings, partition_id, num_partitions, data_dir)


@functools.lru_cache(maxsize=32)
def local_datasets(settings: FedSettings, partition_id: int, num_partitions: int, data_dir: str) -> tuple[EncodedDataset, EncodedDataset]:
    """Encoded local ``(train, test)`` of a partition (cached per process: it is derived data, not state).

    ``task.encode`` keeps the raw examples: GLUE items carry labels, code-task items ``lm_labels``
    (answer-token loss) and the problems that pass@1 scores.
    """
    data = local_data(settings, partition_id, num_partitions, data_dir)
    frozen = FrozenModel.load(settings.model_name, settings.kind)  # per-process cache, no prompt generator built
    task, limit = settings.task_spec, settings.train.max_length
    train = poisoned_train(settings, partition_id, data.train)  # labelflip attackers only (research knob)
    return task.encode(list(train), frozen, limit), task.encode(list(data.test), frozen, limit)


def prepare(settings: FedSettings, env: ClientEnv, received: Mapping[str, Any]) -> tuple[PromptedModel, list[str], bool]:
    """Build the model, restore the private tensors, install the received shared ones.

    Returns
    -------
    (model, federated, restored)
        ``federated`` are the names sent back and forth; ``restored`` says whether a private
        state file of this run was found.

    Raises
    ------
    ProtocolError
        The received keys are not exactly the federated names.
    PrivateStateError
        This run's private-state file is bad and ``on-bad-private-state`` is ``"error"``.
    """
    model = new_model(settings)
    fed = federated_names(model.roles(), settings.federate)
    if set(received) != set(fed):
        raise ProtocolError(
            f"received tensors {sorted(received)} but federate={settings.federate!r} expects {sorted(fed)}"
        )
    private_names = [n for n in model.named_trainable() if n not in set(fed)]
    store = PrivateStore(env.private_dir, env.partition_id, env.num_partitions, encoder=encoder_of(model))
    shapes = {n: tuple(p.shape) for n, p in model.named_trainable().items()}
    restored = False
    if private_names:
        saved = store.load(
            state_tag=env.state_tag,
            fingerprint=settings.fingerprint(),
            expected={n: shapes[n] for n in private_names},
            on_bad=settings.paths.on_bad_private_state,
        )
        if saved is not None:
            model.load_state(saved)
            restored = True
    if received:
        model.load_state({k: torch.as_tensor(np.asarray(v)) for k, v in received.items()})
    return model, fed, restored


@contextlib.contextmanager
def proximal_term(model: PromptedModel, names: list[str], mu: float) -> Iterator[None]:
    """FedProx: add ``mu·(w − w_global)`` to the gradients of the federated tensors while active."""
    if mu <= 0 or not names:
        yield
        return
    params = model.named_trainable()
    handles = []
    for n in names:
        p = params[n]
        w0 = p.detach().clone()
        handles.append(p.register_hook(lambda g, p=p, w0=w0: g + mu * (p.detach() - w0)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def local_train(
    settings: FedSettings, env: ClientEnv, received: Mapping[str, Any], server_round: int, proximal_mu: float = 0.0
) -> tuple[dict[str, torch.Tensor], dict[str, float | int]]:
    """Train on the local split; save the private tensors; return ``(shared tensors to send, metrics)``."""
    train_ds, _ = local_datasets(settings, env.partition_id, env.num_partitions, env.data_dir)
    model, fed, restored = prepare(settings, env, received)
    seed = settings.seed + 1009 * int(server_round) + env.partition_id
    with proximal_term(model, fed, proximal_mu):
        res = fit(model, train_ds, settings.train_config(seed=seed))
    private_names = [n for n in model.named_trainable() if n not in set(fed)]
    if private_names:
        PrivateStore(env.private_dir, env.partition_id, env.num_partitions, encoder=encoder_of(model)).save(
            model.state(private_names),
            state_tag=env.state_tag,
            fingerprint=settings.fingerprint(),
            server_round=server_round,
            extra=private_meta(settings),
        )
    metrics: dict[str, float | int] = {
        "num-examples": int(len(train_ds)),
        "train-loss": float(res["loss"]),
        "first-loss": float(res["first_loss"]),
        "steps": int(res["steps"]),
        "seconds": float(res["seconds"]),
        "partition-id": int(env.partition_id),
        "model-loads": model_loads(),
        "private-restored": int(restored),
    }
    return model.state(fed), metrics


def local_evaluate(settings: FedSettings, env: ClientEnv, received: Mapping[str, Any]) -> dict[str, float | int]:
    """Personalised evaluation: own private tensors + received global ones, on the local test split.

    ``task.evaluate`` scores it: GLUE gives ``accuracy`` and the task metric ``score``; code tasks
    give execution-based pass@1 (greedy generation, sandboxed checks) as ``score``, which is then
    reported as ``accuracy`` too (:func:`lopa_fed.federation.reported_metric`), and the
    answer-token loss.
    """
    _, test_ds = local_datasets(settings, env.partition_id, env.num_partitions, env.data_dir)
    model, _, restored = prepare(settings, env, received)
    res = evaluate(
        model,
        test_ds,
        batch_size=settings.train.eval_batch_size,
        max_new_tokens=settings.max_new_tokens,
        max_prompt_length=settings.train.max_length,
        gen_batch_size=settings.train.batch_size,  # code tasks: as before the task interface
        workers=1,  # one sandboxed program at a time per client: clients share the cores
    )
    return {
        "num-examples": int(res["num_examples"]),
        "accuracy": float(res["accuracy"] if "accuracy" in res else res["score"]),
        "score": float(res["score"]),
        "eval-loss": float(res["loss"]),
        "partition-id": int(env.partition_id),
        "model-loads": model_loads(),
        "private-restored": int(restored),
    }
